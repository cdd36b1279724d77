"""The layer stack holds: import-linter's contracts (pyproject.toml), and what each process imports.

    flywheel (CLI) > api > workflows > curation | training > contract

A new upward import, a curation module importing training (or the reverse), or an engine library
reaching the contract fails here. The process checks catch what a static graph cannot: what a
fresh interpreter actually loads when it imports the training client or starts the service.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _loaded_after(code: str, watch: tuple[str, ...]) -> list[str]:
    """The modules of `watch` a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {list(watch)!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_contracts_hold():
    done = subprocess.run([str(LINT_IMPORTS), "pyproject.toml"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert "broken" in done.stdout and "0 broken" in done.stdout  # the contracts ran


CURATION_AND_SERVICE = ("ray.data", "presidio_analyzer", "spacy", "kenlm", "fasttext", "fastapi", "sqlalchemy",
                        "curation", "api", "workflows")


@pytest.mark.slow
def test_the_training_client_loads_no_curation_engine_and_no_service():
    code = "\n".join(f"import {m}" for m in (
        "contract.manifest", "contract.shards", "contract.tokenizer", "contract.locations", "training.launch",
        "training.trainer", "training.evaluate", "training.export_hf", "training.data.dataset",
        "training.data.validate", "training.commands"))
    assert _loaded_after(code, CURATION_AND_SERVICE) == []


def test_the_contract_loads_no_engine():
    code = "import contract.manifest, contract.shards, contract.tokenizer, contract.locations, contract.layout"
    assert _loaded_after(code, ("torch", "ray", "tokenizers", *CURATION_AND_SERVICE, "training")) == []


@pytest.mark.slow
def test_the_service_process_never_imports_torch(tmp_path):
    """The web process builds the app and answers its pages without torch (jobs run in Ray actors)."""
    code = f"""
import os
os.environ["FLYWHEEL_HOME"] = {str(tmp_path)!r}
from fastapi.testclient import TestClient
from api.app import create_app
from api.settings import Settings
with TestClient(create_app(Settings.from_env(auth=False))) as client:
    for path in ("/healthz", "/", "/v1/jobs", "/v1/training-jobs", "/v1/ablations", "/openapi.json"):
        assert client.get(path).status_code < 500, path
"""
    assert _loaded_after(code, ("torch", "transformers")) == []


def test_the_cli_starts_without_engines():
    """`flywheel --help` registers every command without loading Ray, torch or the service."""
    code = "from typer.testing import CliRunner\nfrom flywheel.cli import app\nassert CliRunner().invoke(app, ['--help']).exit_code == 0"
    assert _loaded_after(code, ("torch", "ray", "fastapi", "sqlalchemy", "presidio_analyzer", "spacy")) == []


PACKAGES = ("contract", "curation", "training", "workflows", "api", "flywheel")


def _function_level_imports() -> list[tuple[str, int, str, str]]:
    """(file, line, the import's line, the line above) of every import inside a function."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            source = path.read_text()
            lines = source.splitlines()
            for fn in ast.walk(ast.parse(source)):
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for node in ast.walk(fn):
                        if isinstance(node, (ast.Import, ast.ImportFrom)):
                            found.append((str(path.relative_to(REPO)), node.lineno, lines[node.lineno - 1],
                                          lines[node.lineno - 2]))
    return sorted(set(found))


def test_function_level_imports_say_why():
    """An import inside a function is for a heavy or optional dependency (Ray, torch, Presidio,
    an extra the process may lack), and says which in a comment on its line or the line above.
    One that only dodges a cycle is a layering bug: the contracts above make it unnecessary."""
    silent = [f"{path}:{line}: {text.strip()}" for path, line, text, above in _function_level_imports()
              if "#" not in text and not above.strip().startswith("#")]
    assert not silent, "function-level imports without a reason:\n" + "\n".join(silent)
