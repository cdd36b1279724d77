"""Held-out evaluation (`training.evaluate`): the loss is causal_lm_loss over training's windows,
totals add up per file and domain, `flywheel evaluate` reads a trainer's checkpoint by itself,
and training writes eval.jsonl every N steps (rolled back on resume like metrics.jsonl)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tokenizers")

from typer.testing import CliRunner  # noqa: E402

from contract.layout import TrainingRun  # noqa: E402
from contract.manifest import parse_manifest, write_manifest  # noqa: E402
from contract.shards import open_index, open_tokens, sha256_file  # noqa: E402
from contract.tokenizer import SpecialTokens, load_tokenizer  # noqa: E402
from curation.tokenizer import train_bpe  # noqa: E402
from flywheel.cli import app  # noqa: E402
from tests.training.helpers import tiny_config  # noqa: E402
from training.checkpoint import CheckpointManager, read_meta  # noqa: E402
from training.config import tiny  # noqa: E402
from training.data.dataset import ManifestDataset  # noqa: E402
from training.data.synthetic import write_synthetic_dataset  # noqa: E402
from training.evaluate import evaluate_checkpoint, evaluate_model, load_eval_sets, pack_windows  # noqa: E402
from training.export_hf import load_checkpoint_model  # noqa: E402
from training.launch import run_worker  # noqa: E402
from training.metrics_log import read_metrics  # noqa: E402
from training.model import causal_lm_loss, doc_ids_from_starts  # noqa: E402

VOCAB = 320  # a byte-level BPE: 256 bytes + 3 special tokens + a few merges
SEQ = 32
WORDS = "the quick brown fox jumps over a lazy dog while five boxing wizards quickly pack my jugs".split()


def sentences(rng: np.random.Generator, n: int, words: tuple[int, int] = (3, 25)) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(*words)))) for _ in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A synthetic manifest whose tokenizer is a real BPE (ids 0/1/2 = bos/eos/pad, as the
    shards'), and two eval files: web + code in one, web + no domain ("unknown") in the other."""
    root = tmp_path_factory.mktemp("eval-data")
    manifest_path = write_synthetic_dataset(root / "data", total_tokens=20_000, vocab_size=VOCAB,
                                            mean_doc_tokens=60, seed=0)  # fmt: skip
    rng = np.random.default_rng(0)
    tokenizer_path = manifest_path.parent / "tokenizer.json"
    train_bpe([sentences(rng, 200)], vocab_size=VOCAB, special=SpecialTokens()).save(str(tokenizer_path))
    manifest = parse_manifest(manifest_path.read_bytes())
    info = manifest.tokenizer.model_copy(update={"sha256": sha256_file(tokenizer_path)})
    write_manifest(manifest_path, manifest.model_copy(update={"tokenizer": info}))

    a = write_jsonl(root / "a" / "val.jsonl", [{"text": t, "domain": d, "id": i} for i, (t, d) in
                                               enumerate(zip(sentences(rng, 12), ["web", "code"] * 6))])
    b = write_jsonl(root / "b" / "val.jsonl", [{"text": t, **({"domain": "web"} if i % 2 else {})}
                                               for i, t in enumerate(sentences(rng, 9) + ["naïve café ✓"])])
    return {"manifest": str(manifest_path), "tokenizer": load_tokenizer(str(tokenizer_path)), "files": [a, b],
            "tokenizer_path": tokenizer_path}


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = tiny(VOCAB).build()
    with torch.no_grad():  # off the init, so routing and attention are not trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def hand_nll(model: torch.nn.Module, documents: list[np.ndarray], seq_len: int) -> tuple[float, int]:
    """Summed NLL and target count by causal_lm_loss over windows cut by hand, in one forward:
    window k = stream[k * seq_len : k * seq_len + seq_len + 1], zero-padded, padding unscored,
    each padding token a document of its own."""
    stream = torch.from_numpy(np.concatenate(documents))
    starts = torch.zeros(len(stream), dtype=torch.bool)
    starts[np.cumsum([0] + [len(d) for d in documents[:-1]])] = True
    inputs, targets, doc_starts = [], [], []
    for k in range(0, len(stream) - 1, seq_len):
        window = stream[k : k + seq_len + 1]
        pad = seq_len + 1 - len(window)
        inputs.append(torch.cat([window, torch.zeros(pad, dtype=torch.long)])[:-1])
        targets.append(torch.cat([window[1:], torch.full((pad,), -100)]))
        doc_starts.append(torch.cat([starts[k : k + seq_len + 1], torch.ones(pad, dtype=torch.bool)])[:-1])
    targets_BS = torch.stack(targets)
    with torch.no_grad():
        logits = model(torch.stack(inputs), doc_ids_from_starts(torch.stack(doc_starts))).logits_BSV
    count = int((targets_BS != -100).sum())
    return float(causal_lm_loss(logits, targets_BS)) * count, count


def test_loss_is_causal_lm_loss_over_training_windows_and_totals_add_up(data):
    sets = load_eval_sets(data["files"], data["tokenizer"], eos_id=1)
    assert [(s.file, s.domain) for s in sets] == [("a/val.jsonl", "web"), ("a/val.jsonl", "code"),
                                                  ("b/val.jsonl", "unknown"), ("b/val.jsonl", "web")]
    assert all(int(d[-1]) == 1 for s in sets for d in s.documents)  # EOS appended
    model = tiny_model()  # in train mode: evaluation switches to eval and back

    report = evaluate_model(model, sets, seq_len=SEQ, batch_size=3, device="cpu")

    assert model.training
    model.eval()
    nll, count = map(sum, zip(*(hand_nll(model, s.documents, SEQ) for s in sets)))
    assert report.overall.tokens == count == sum(s.tokens - 1 for s in sets)
    assert report.overall.loss == pytest.approx(nll / count, abs=1e-6)
    assert report.overall.perplexity == pytest.approx(math.exp(nll / count))
    utf8 = sum(len(json.loads(line)["text"].encode()) for f in data["files"] for line in f.read_text().splitlines())
    assert report.overall.bits_per_byte == pytest.approx(nll / math.log(2) / utf8, rel=1e-6)

    out = report.to_dict()
    for part in ("domains", "files"):
        assert sum(d["tokens"] for d in out[part].values()) == out["overall"]["tokens"]
        assert sum(d["documents"] for d in out[part].values()) == out["overall"]["documents"] == 22
    assert sorted(out["domains"]) == ["code", "unknown", "web"]
    assert out["domains"]["web"]["documents"] == 6 + 5  # summed over both files
    json.dumps(out, allow_nan=False)
    # Deterministic, and the batch size only groups the same windows. (Another batch size may
    # take another BLAS blocking: fp32 logits then differ in the last bit, ~1e-9 on the mean.)
    again = evaluate_model(model, sets, seq_len=SEQ, batch_size=8, device="cpu")
    assert again.overall.loss == pytest.approx(report.overall.loss, rel=1e-6)
    assert evaluate_model(model, sets, SEQ, 8, "cpu").to_dict() == again.to_dict()
    # Plain causal attention sees across documents: another number.
    causal = evaluate_model(model, sets, seq_len=SEQ, batch_size=8, device="cpu", document_mask=False)
    assert causal.overall.tokens == count and causal.overall.loss != pytest.approx(report.overall.loss, abs=1e-6)


def test_windows_are_the_training_windows(data):
    """pack_windows over the manifest's own documents gives ManifestDataset's windows."""
    dataset = ManifestDataset(data["manifest"], seq_len=SEQ, seed=0)
    shard = dataset.manifest.shards[0]
    assert len(dataset.manifest.shards) == 1
    folder = Path(data["manifest"]).parent
    tokens = np.asarray(open_tokens(folder / shard.path, dataset.manifest.dtype), dtype=np.int64)
    index = np.asarray(open_index(folder / shard.index_path))
    documents = [tokens[a:b] for a, b in zip(index[:-1], index[1:])]

    batch, valid_WS = pack_windows(documents, SEQ)

    assert len(batch.tokens) == -(-(len(tokens) - 1) // SEQ) >= dataset.sequences_per_epoch
    for k in range(dataset.sequences_per_epoch):
        window_tokens, window_positions = dataset.window(k)
        np.testing.assert_array_equal(batch.tokens[k], window_tokens)
        np.testing.assert_array_equal(batch.positions[k], window_positions)
    assert valid_WS[:-1].all() and valid_WS.sum() == len(tokens) - 1


def test_eval_files_must_be_clean(tmp_path, data):
    tok = data["tokenizer"]
    bad = tmp_path / "bad.jsonl"
    for content, message in [('{"text": "ok"}\n{"text": \n', r"bad.jsonl:2: not valid JSON"),
                             ('{"text": "ok"}\n\n{"txt": "x"}\n', r"bad.jsonl:3: .*string `text`"),
                             ('["text"]\n', r"bad.jsonl:1"), ('{"text": "a", "domain": 3}\n', r"bad.jsonl:1: `domain`")]:
        bad.write_text(content)
        with pytest.raises(ValueError, match=message):
            load_eval_sets([bad], tok, eos_id=1)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_eval_sets([tmp_path / "missing.jsonl"], tok, eos_id=1)
    with pytest.raises(ValueError, match="twice"):
        load_eval_sets([data["files"][0], data["files"][0]], tok, eos_id=1)
    bad.write_text('{"text": "a b"}\n')
    (only,) = load_eval_sets([bad], tok, eos_id=None, default_domain="misc")
    assert only.domain == "misc" and only.file == "bad.jsonl" and 1 not in only.documents[0]


# --- training with evaluation, and `flywheel evaluate` on its checkpoint ---------------------


def train_config(data: dict, out: Path, steps: int, **overrides):
    optimizer = {"lr": 3e-3, "router_lr": 3e-3, "schedule": {"total_steps": 8, "warmup_steps": 1}}
    return tiny_config(data["manifest"], out, steps=steps, optimizer=optimizer,
                       eval_files=[str(f) for f in data["files"]], **overrides)  # fmt: skip


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run_worker(train_config(data, out, steps=4, eval_every_steps=2, eval_batch_size=4))
    return out


def test_training_evaluates_every_n_steps(trained, data):
    records = read_metrics(trained, TrainingRun.EVAL)
    assert [r["step"] for r in records] == [2, 4]
    assert [r["tokens"] for r in records] == [2 * 256, 4 * 256]
    assert set(records[-1]["files"]) == {"a/val.jsonl", "b/val.jsonl"} and records[-1]["overall"]["documents"] == 22
    meta = read_meta(CheckpointManager(trained / "checkpoints").latest())
    assert meta["step"] == 4 and meta["seq_len"] == SEQ and meta["manifest"] == str(Path(data["manifest"]).resolve())

    report = evaluate_checkpoint(trained, data["files"], batch_size=4)  # the tokenizer: the manifest's

    assert report.step == 4 and report.seq_len == SEQ
    assert report.overall.loss == pytest.approx(records[-1]["overall"]["loss"], abs=1e-9)
    assert report.to_dict()["domains"].keys() == records[-1]["domains"].keys()


def test_flywheel_evaluate_prints_the_table_and_writes_json(trained, data, tmp_path):
    out_json = tmp_path / "report.json"
    args = ["evaluate", str(trained / "checkpoints"), "--json", str(out_json), "--batch-size", "5"]
    args += [a for f in data["files"] for a in ("--eval", str(f))]

    result = CliRunner().invoke(app, args, terminal_width=200)

    assert result.exit_code == 0, result.output
    for row in ("file a/val.jsonl", "file b/val.jsonl", "domain code", "domain unknown", "domain web", "overall"):
        assert row in result.output
    assert "perplexity" in result.output and "bits/byte" in result.output
    written = json.loads(out_json.read_text())
    assert written["step"] == 4 and set(written) >= {"overall", "domains", "files"}
    model, meta = load_checkpoint_model(trained)
    sets = load_eval_sets(data["files"], data["tokenizer"], eos_id=1)
    expected = evaluate_model(model, sets, meta["seq_len"], batch_size=2, device="cpu")
    assert written["overall"]["loss"] == pytest.approx(expected.overall.loss, abs=1e-6)

    # An explicit tokenizer and seq_len; errors are one line and exit 2.
    ok = CliRunner().invoke(app, ["evaluate", str(trained), "--eval", str(data["files"][1]), "--seq-len", "16",
                                  "--tokenizer", str(data["tokenizer_path"])])
    assert ok.exit_code == 0, ok.output
    for bad_args, message in [([str(trained), "--eval", str(tmp_path / "nope.jsonl")], "no such evaluation file"),
                              ([str(tmp_path), "--eval", str(data["files"][0])], "no complete checkpoint")]:
        failed = CliRunner().invoke(app, ["evaluate", *bad_args])
        assert failed.exit_code == 2 and message in failed.output, failed.output


def test_eval_log_is_rolled_back_on_resume(data, tmp_path):
    out = tmp_path / "run"
    run_worker(train_config(data, out, steps=3, eval_every_steps=1, checkpoint_every_steps=2, keep_checkpoints=3))
    (out / "checkpoints" / "step_00000003" / "meta.json").unlink()  # as if the last save crashed
    run_worker(train_config(data, out, steps=4, eval_every_steps=2, checkpoint_every_steps=2, keep_checkpoints=3,
                            resume=True))  # fmt: skip
    assert [r["step"] for r in read_metrics(out, TrainingRun.EVAL)] == [1, 2, 4]
    assert [json.loads(line)["step"] for line in (out / "eval.rolled_back.jsonl").read_text().splitlines()] == [3]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]


def test_no_eval_files_no_eval_log(data, tmp_path):
    from training.train_config import TrainConfig

    with pytest.raises(ValueError, match="eval_every_steps needs eval_files"):
        TrainConfig.model_validate({"optimizer": {}, "eval_every_steps": 2})
    run_worker(tiny_config(data["manifest"], tmp_path, steps=1))
    assert not (tmp_path / TrainingRun.EVAL).exists() and (tmp_path / "metrics.jsonl").exists()


def _train_sharded(rank: int, world: int, cfg_json: str) -> None:
    from training.train_config import TrainConfig

    run_worker(TrainConfig.model_validate_json(cfg_json))


@pytest.mark.slow
def test_sharded_training_evaluates_like_one_process(data, tmp_path):
    """FSDP over 2 ranks with the experts split 4 + 4: the evaluation's forwards are collectives
    every rank runs alike, and the logged loss is the single-process one of the same weights."""
    from tests.training.helpers import spawn

    out = tmp_path / "run"
    spawn(2, _train_sharded, train_config(data, out, steps=2, eval_every_steps=1, ep=2).model_dump_json())
    records = read_metrics(out, TrainingRun.EVAL)
    assert [r["step"] for r in records] == [1, 2] and read_metrics(out)[-1]["ep"] == 2
    report = evaluate_checkpoint(out, data["files"])
    assert report.overall.loss == pytest.approx(records[-1]["overall"]["loss"], abs=1e-5)
