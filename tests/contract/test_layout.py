"""The contract layer: run layouts (`contract/layout.py`) are the one place a run's file names are
spelled, and `contract/atomic.py` the one all-or-nothing writer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from contract.layout import AblationRun, CurationRun, TrainingRun, join

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("curation", "training", "workflows", "api", "flywheel")


def _file_names() -> set[str]:
    """Every name of the three layouts that is a file (has an extension) or a nested path:
    distinctive enough that a string equal to one is a copy. Folder names ("data", "train")
    are ordinary words and not checked."""
    names = set()
    for layout in (CurationRun, TrainingRun, AblationRun):
        for attr, value in vars(layout).items():
            if attr.isupper() and isinstance(value, str) and ("." in value or "/" in value):
                names.add(value)
    return names


def test_no_module_spells_a_run_file_name_of_its_own():
    names = _file_names()
    assert {"stats.json", "manifest.json", "tokenizer.json", "metrics.jsonl", "index/minhash"} <= names
    copies = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                          and node.body and isinstance(node.body[0], ast.Expr)
                          and isinstance(node.body[0].value, ast.Constant)}
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and node.value.lstrip("/") in names and id(node) not in docstrings):
                    copies.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not copies, "run file names belong in contract/layout.py:\n" + "\n".join(copies)


def test_layouts_join_local_paths_and_uris_alike(tmp_path):
    assert CurationRun("s3://bucket/run/").manifest == "s3://bucket/run/manifest.json"
    assert CurationRun(str(tmp_path)).minhash_index == f"{tmp_path}/index/minhash"
    ablation = AblationRun("s3://b/abl")
    assert ablation.variant_training("raw").metrics == "s3://b/abl/variants/raw/train/metrics.jsonl"
    assert ablation.variant("raw") == "s3://b/abl/variants/raw"
    assert TrainingRun("out").checkpoints == join("out", "checkpoints") == "out/checkpoints"


def test_atomic_writes_publish_the_same_bytes_locally_and_through_a_filesystem(tmp_path):
    import pyarrow.fs as pafs

    from contract.atomic import json_bytes, write_json_atomic

    doc = {"b": 1, "a": [1.5, "x"]}
    write_json_atomic(tmp_path / "local.json", doc)
    write_json_atomic(str(tmp_path / "arrow.json"), doc, fs=pafs.LocalFileSystem())
    assert (tmp_path / "local.json").read_bytes() == (tmp_path / "arrow.json").read_bytes() == json_bytes(doc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrow.json", "local.json"]  # no temporary left
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()
