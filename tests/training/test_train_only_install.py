"""The training client alone: `flywheel train`, `evaluate` and `export-hf` in a process where the
curation and service libraries cannot be imported, as after `pip install '.[train]'`.

The subprocess marks every library only `flywheel[curate]` or `flywheel[service]` bring (Ray Data
included) as absent (`sys.modules[name] = None`: `import` raises ModuleNotFoundError, and
`importlib.util.find_spec` answers None, as for a missing optional package), then runs the real
`flywheel` entry point. A command that reaches one of them fails, so this catches a new import of
the curation side anywhere on the training path, at module level or inside a function.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.training.helpers import write_bpe_manifest

REPO = Path(__file__).resolve().parents[2]
VOCAB = 300
# What flywheel[curate] and flywheel[service] add to a train-only install (see pyproject.toml).
NOT_INSTALLED = ("ray.data", "datasketch", "rensa", "simhash", "fasttext", "presidio_analyzer",
                 "presidio_anonymizer", "spacy", "kenlm", "xxhash", "msgspec", "isal", "orjson", "zstandard",
                 "fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "prometheus_client", "jinja2", "multipart")
RUN_TRAIN_ONLY = f"""
import sys
sys.modules.update(dict.fromkeys({NOT_INSTALLED!r}))
sys.argv = ["flywheel", *sys.argv[1:]]
from flywheel.cli import main
main()
"""


def flywheel_train_only(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", RUN_TRAIN_ONLY, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
    return done


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """Synthetic shards with a real BPE tokenizer (trained here, in the full test process)."""
    root = tmp_path_factory.mktemp("train-only")
    words = "a tiny corpus about foxes dogs and boxes for the tokenizer to merge".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=12)) for _ in range(100)]
    manifest_path = write_bpe_manifest(root / "data", texts, VOCAB, mean_doc_tokens=40)
    held_out = root / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"text": t, "domain": "web"}) + "\n" for t in texts[:8]))
    config = root / "run.json"
    config.write_text(json.dumps({"seq_len": 16, "global_batch_tokens": 64, "micro_batch": 4,
                                  "model": {"attn_dropout": 0.0}}))
    return {"manifest": str(manifest_path), "tokenizer": str(manifest_path.parent / "tokenizer.json"), "held_out": str(held_out),
            "config": str(config), "root": root}


@pytest.mark.slow
def test_train_evaluate_and_export_without_the_curation_or_service_libraries(dataset):
    out = dataset["root"] / "run"
    flywheel_train_only("train", dataset["config"], "--manifest", dataset["manifest"], "--preset", "tiny",
                        "--steps", "3", "--out", str(out), "--local")
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    report = dataset["root"] / "eval.json"
    flywheel_train_only("evaluate", str(out), "--eval", dataset["held_out"], "--json", str(report))
    assert json.loads(report.read_text())["overall"]["tokens"] > 0

    exported = dataset["root"] / "hf"
    flywheel_train_only("export-hf", str(out), str(exported), "--tokenizer", dataset["tokenizer"])
    assert (exported / "config.json").is_file() and (exported / "model.safetensors").is_file()

    flywheel_train_only("validate-manifest", dataset["manifest"])


def test_the_hook_refuses_what_a_train_only_install_lacks():
    """The check above means something: the same hook makes a curation command fail."""
    done = subprocess.run([sys.executable, "-c", RUN_TRAIN_ONLY, "curate", "nothing.yaml"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "None in sys.modules" in done.stderr, done.stderr[-2000:]
