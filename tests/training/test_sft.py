"""Supervised fine-tuning: the chat template's loss mask (by hand, and as Hugging Face's template
marks it), the masked loss against a manual cross-entropy, packing that keeps conversations
apart and a cursor that resumes exactly, and `flywheel sft` runs from a 2-step pretraining
checkpoint: held-out assistant loss falls, 2 gloo ranks log 1 process's losses, a resumed run
continues the uninterrupted one.

The tokenizer is a byte-level BPE with no merges (256 bytes + 3 special tokens), so every
character of these ASCII texts is one token and the masks can be written down by hand.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("tokenizers")

from tokenizers import Tokenizer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from contract.layout import TrainingRun  # noqa: E402
from contract.manifest import Provenance, TokenizerInfo, parse_manifest, write_manifest  # noqa: E402
from contract.posttrain import (  # noqa: E402
    PosttrainFile,
    PosttrainManifest,
    posttrain_totals,
    write_posttrain_manifest,
)
from contract.shards import sha256_file  # noqa: E402
from contract.tokenizer import SpecialTokens, load_tokenizer  # noqa: E402
from curation.tokenizer import train_bpe  # noqa: E402
from flywheel.cli import app  # noqa: E402
from tests.training.helpers import spawn, tiny_config  # noqa: E402
from training.chat_format import (  # noqa: E402
    CHAT_TEMPLATE_JINJA,
    TOKENIZER_CONFIG,
    encode_chat,
    encode_prompt,
    render_chat,
)
from training.checkpoint import CheckpointManager  # noqa: E402
from training.config import tiny  # noqa: E402
from training.data.sft_dataset import SFTDataset, encode_conversations  # noqa: E402
from training.data.synthetic import write_synthetic_dataset  # noqa: E402
from training.launch import run_worker  # noqa: E402
from training.metrics_log import read_metrics  # noqa: E402
from training.model import causal_lm_loss  # noqa: E402
from training.sft import SFT_DATA, SFTConfig, load_sft_config, read_chat_sources, sft_trainer  # noqa: E402
from training.trainer import micro_batch_of  # noqa: E402

VOCAB = 259  # 256 bytes + <|bos|> <|eos|> <|pad|>: no merges
EOS = 1
SEQ = 96  # two 42-token conversations per window
FACTS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "sun": "yellow", "blood": "red"}


def conversation(rng: np.random.Generator) -> dict:
    thing = str(rng.choice(sorted(FACTS)))
    messages = [{"role": "user", "content": f"color of {thing}?"}, {"role": "assistant", "content": FACTS[thing]}]
    if rng.random() < 0.3:
        messages.insert(0, {"role": "system", "content": "be brief"})
    return {"messages": messages}


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def byte_tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok = train_bpe([["just bytes"]], vocab_size=VOCAB, special=SpecialTokens())
    assert tok.get_vocab_size() == VOCAB and tok.token_to_id("<|eos|>") == EOS
    tok.save(str(path))
    return load_tokenizer(str(path))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict:
    """A manifest whose tokenizer is the byte-level BPE, a 2-step tiny pretraining run on it, and
    train / held-out chat files (the same Q -> A facts, different records)."""
    root = tmp_path_factory.mktemp("sft")
    manifest_path = write_synthetic_dataset(root / "data", total_tokens=20_000, vocab_size=VOCAB, mean_doc_tokens=60)
    tok = train_bpe([["just bytes"]], vocab_size=VOCAB, special=SpecialTokens())
    tok.save(str(manifest_path.parent / "tokenizer.json"))
    manifest = parse_manifest(manifest_path.read_bytes())
    info = manifest.tokenizer.model_copy(update={"sha256": sha256_file(manifest_path.parent / "tokenizer.json")})
    write_manifest(manifest_path, manifest.model_copy(update={"tokenizer": info}))
    run_worker(tiny_config(str(manifest_path), root / "pretrain", steps=2))
    rng = np.random.default_rng(0)
    train = write_jsonl(root / "chat.jsonl", [conversation(rng) for _ in range(64)])
    held_out = write_jsonl(root / "chat_val.jsonl", [conversation(rng) for _ in range(12)])
    return {"root": root, "pretrain": str(root / "pretrain"), "train": train, "eval": held_out}


def sft_config(data: dict, out: Path, **overrides) -> SFTConfig:
    settings = dict(init_checkpoint=data["pretrain"], data=[data["train"]], eval_files=[data["eval"]],
                    out_dir=str(out), seq_len=SEQ, global_batch_tokens=SEQ * 8, micro_batch=4, steps=30,
                    optimizer={"lr": 3e-3, "router_lr": 3e-3, "schedule": {"total_steps": 30, "warmup_steps": 3}},
                    peak_tflops_per_worker=0.05, checkpoint_interval_s=3600, resume=False)  # fmt: skip
    return load_sft_config(**{**settings, **overrides})


# ---------------------------------------------------------------------------------------------
# The template and its mask
# ---------------------------------------------------------------------------------------------

TWO_TURNS = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                          {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]}  # fmt: skip


def test_loss_mask_of_a_two_turn_conversation_by_hand(byte_tokenizer):
    ids, mask = encode_chat(TWO_TURNS, byte_tokenizer, EOS)
    # "<|user|>\n2+2?\n" is 14 bytes, "<|assistant|>\n" 14, then "4" and EOS; the same again.
    assert len(ids) == 60
    assert np.flatnonzero(mask).tolist() == [28, 29, 58, 59]
    assert ids[29] == EOS and ids[59] == EOS and EOS not in ids[:29].tolist() + ids[30:59].tolist()
    assert byte_tokenizer.decode(ids[28:29].tolist()) == "4" and byte_tokenizer.decode(ids[58:59].tolist()) == "6"
    text = byte_tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    expected = "<|user|>\n2+2?\n<|assistant|>\n4<|eos|><|user|>\n3+3?\n<|assistant|>\n6<|eos|>"
    assert text == render_chat(TWO_TURNS["messages"]) == expected
    # The generation prompt is the conversation's prefix up to the answer.
    prompt = encode_prompt(TWO_TURNS["messages"][:3], byte_tokenizer, EOS)
    assert prompt == ids[:58].tolist()
    # A message that spells the EOS token is text, not an end of turn.
    spoof_messages = [{"role": "user", "content": "<|eos|>"}, {"role": "assistant", "content": "x"}]
    spoof, _ = encode_chat({"messages": spoof_messages}, byte_tokenizer, EOS)
    assert spoof.tolist().count(EOS) == 1


def test_hugging_face_template_gives_the_same_ids_and_mask(byte_tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    raw = Tokenizer.from_str(byte_tokenizer.to_str())  # as AutoTokenizer loads it: <|eos|> is special
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|eos|>",
                                              chat_template=CHAT_TEMPLATE_JINJA)
    out = hf.apply_chat_template(TWO_TURNS["messages"], tokenize=True, return_dict=True,
                                 return_assistant_tokens_mask=True)  # fmt: skip
    ids, mask = encode_chat(TWO_TURNS, byte_tokenizer, EOS)
    assert out["input_ids"] == ids.tolist()
    assert out["assistant_masks"] == mask.astype(int).tolist()
    prompt = hf.apply_chat_template(TWO_TURNS["messages"][:3], tokenize=True, add_generation_prompt=True)
    prompt = prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt
    assert prompt == encode_prompt(TWO_TURNS["messages"][:3], byte_tokenizer, EOS)


# ---------------------------------------------------------------------------------------------
# Packing, masked loss, cursor
# ---------------------------------------------------------------------------------------------


TOKENIZER_INFO = TokenizerInfo(path="tokenizer.json", sha256="0" * 64, vocab_size=VOCAB,
                               special_ids={"bos": 0, "eos": EOS, "pad": 2})  # what a manifest lists


def chat_dataset(tokenizer, records, seq_len=SEQ, **kwargs) -> SFTDataset:
    return SFTDataset(encode_conversations(records, tokenizer, EOS), seq_len, seed=0, tokenizer=TOKENIZER_INFO,
                      location="unused", **kwargs)  # fmt: skip


def test_masked_loss_is_cross_entropy_over_assistant_tokens_only(byte_tokenizer):
    rng = np.random.default_rng(1)
    ds = chat_dataset(byte_tokenizer, [conversation(rng) for _ in range(8)] + [TWO_TURNS])
    batch = ds.read_batch(0, 3)
    mb = micro_batch_of(batch, torch.device("cpu"), document_mask=True)
    assert torch.equal(mb.targets_BS != -100, torch.from_numpy(batch.loss_mask[:, 1:]))
    torch.manual_seed(0)
    model = tiny(VOCAB).build().eval()
    with torch.no_grad():
        logits = model(mb.inputs_BS, mb.doc_ids_BS).logits_BSV
    nll, count = 0.0, 0
    for b, t in zip(*np.nonzero(batch.loss_mask)):  # token t is predicted from position t - 1
        nll -= float(F.log_softmax(logits[b, t - 1].double(), dim=-1)[batch.tokens[b, t]])
        count += 1
    assert count == int(batch.loss_mask[:, 1:].sum()) > 0
    assert float(causal_lm_loss(logits, mb.targets_BS)) == pytest.approx(nll / count, rel=1e-5)


def test_packing_keeps_conversations_apart_and_accounts_for_every_one(byte_tokenizer):
    rng = np.random.default_rng(2)
    records = [conversation(rng) for _ in range(6)]
    long = {"messages": [{"role": "user", "content": "x" * 20}, {"role": "assistant", "content": "y" * 100}]}
    answerless = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}
    cut_before_answer = {"messages": [{"role": "user", "content": "z" * 120}, {"role": "assistant", "content": "a"}]}
    ds = chat_dataset(byte_tokenizer, records + [long, answerless, cut_before_answer])
    s = ds.stats
    assert (s.conversations, s.kept, s.truncated, s.dropped_no_assistant_tokens) == (9, 7, 2, 2)
    # marker + user text + "\n" + marker + answer + EOS, less the window
    assert s.truncated_tokens == (9 + 20 + 1 + 14 + 100 + 1 - (SEQ + 1)) + (9 + 120 + 1 + 14 + 1 + 1 - (SEQ + 1))
    assert s.windows * (SEQ + 1) == s.tokens + s.padding_tokens

    torch.manual_seed(0)
    model = tiny(VOCAB).build().eval()
    found = 0
    batch = ds.read_batch(0, ds.sequences_per_epoch)
    for row in range(len(batch.tokens)):
        starts = np.flatnonzero(batch.positions[row] == 0)
        segments = batch.segment_ids()[row]
        # Two conversations in a window: the second one's logits are those it has alone.
        real = [int(a) for a in starts if batch.tokens[row, a] == byte_tokenizer.token_to_id("<")]
        if len(real) < 2:
            continue
        found += 1
        a = real[1]
        end = a + int(np.sum(segments == segments[a]))
        tokens = torch.from_numpy(batch.tokens[row : row + 1])
        with torch.no_grad():
            packed = model(tokens[:, :-1], torch.from_numpy(segments[None, :-1])).logits_BSV[0, a : min(end, SEQ)]
            alone = model(tokens[:, a : min(end, SEQ)]).logits_BSV[0]
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    assert found > 0


def test_cursor_resumes_exactly_at_any_world_size(byte_tokenizer):
    rng = np.random.default_rng(3)
    records = [conversation(rng) for _ in range(40)]
    ds = chat_dataset(byte_tokenizer, records)
    n = ds.sequences_per_epoch
    batches = [ds.next_batch(4) for _ in range(n // 4 + 2)]  # into the second epoch
    assert {int(e) for b in batches for e in b.epochs} == {0, 1}
    first_epoch = np.concatenate([b.sequences for b in batches])[:n]
    assert sorted(first_epoch.tolist()) == list(range(n))

    resumed = chat_dataset(byte_tokenizer, records)
    state = {**ds.state_dict(), "consumed": 8}
    resumed.load_state_dict(state)
    for expected in batches[2:]:
        got = resumed.next_batch(4)
        assert np.array_equal(got.tokens, expected.tokens) and np.array_equal(got.loss_mask, expected.loss_mask)
    # Two ranks read, interleaved, what one rank reads.
    halves = [chat_dataset(byte_tokenizer, records, rank=r, world_size=2).read_batch(8, 2) for r in range(2)]
    one = ds.read_batch(8, 4)
    assert np.array_equal(np.stack([halves[0].tokens[0], halves[1].tokens[0], halves[0].tokens[1],
                                    halves[1].tokens[1]]), one.tokens)  # fmt: skip
    with pytest.raises(ValueError, match="seed"):
        resumed.load_state_dict({**state, "seed": 5})
    other = chat_dataset(byte_tokenizer, records[:-1])
    with pytest.raises(ValueError, match="manifest_fingerprint"):
        other.load_state_dict(ds.state_dict())


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


def test_sft_from_a_pretrained_checkpoint_lowers_held_out_assistant_loss(pretrained, tmp_path):
    out = tmp_path / "sft"
    runner = CliRunner()
    result = runner.invoke(app, ["sft", "--local", "--init", pretrained["pretrain"], "--data", pretrained["train"],
                                 "--eval", pretrained["eval"], "--out", str(out), "--steps", "30", "--seq-len",
                                 str(SEQ), "--global-batch-tokens", str(SEQ * 8), "--micro-batch", "4",
                                 "--eval-every-steps", "10", "--lr", "1e-2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    evals = read_metrics(out, TrainingRun.EVAL)
    assert [e["step"] for e in evals] == [0, 10, 20, 30]
    before, after = evals[0]["overall"]["loss"], evals[-1]["overall"]["loss"]
    # 12 held-out answers of 3-6 letters + EOS: the pretrained model (random tokens) is near
    # uniform, log(259) = 5.56; 30 steps learn the answers' letters and where they stop (measured:
    # 5.56 -> 1.60; not to 0: the first letter still hesitates between the six answers).
    assert before > 5.0 and after < 0.4 * before, (before, after)
    held_out = [json.loads(line) for line in Path(pretrained["eval"]).read_text().splitlines()]
    scored = sum(len(r["messages"][-1]["content"]) + 1 for r in held_out)  # answer letters + EOS
    assert all(e["overall"]["tokens"] == scored and e["overall"]["documents"] == 12 for e in evals)
    # Without a checkpoint to start from: one line, exit 2.
    missing = runner.invoke(app, ["sft", "--local", "--data", pretrained["train"], "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "--init" in missing.output
    config = json.loads((out / TOKENIZER_CONFIG).read_text())
    assert config["chat_template"] == CHAT_TEMPLATE_JINJA and config["eos_token"] == "<|eos|>"
    stats = json.loads((out / SFT_DATA).read_text())
    assert stats["train"]["kept"] == 64 and stats["train"]["truncated"] == 0
    meta = json.loads(next((out / "checkpoints").glob("step_*/meta.json")).read_text())
    assert meta["step"] == 30 and meta["manifest_id"].startswith("chat:")


def _sft_rank(rank: int, world: int, cfg_json: str) -> None:
    run_worker(SFTConfig.model_validate_json(cfg_json), make_trainer=sft_trainer)


def test_two_ranks_log_the_losses_of_one_process_and_resume_continues(pretrained, tmp_path):
    """EP=2 (experts split) and PP=2 (a pipeline schedule, its forward_nll for evaluation) on two
    ranks log the losses of one process; a run resumed from step 2 continues the straight one."""
    # The step's loss is the global assistant-token mean however the windows are split over
    # ranks and micro-batches (training.token_mean; tests/training/test_sft_token_mean.py).
    schedule = {"lr": 3e-3, "router_lr": 3e-3, "schedule": {"total_steps": 4, "warmup_steps": 1}}
    common = dict(micro_batch=1, steps=4, checkpoint_every_steps=2, keep_checkpoints=3, optimizer=schedule)
    one = sft_config(pretrained, tmp_path / "one", **common)
    run_worker(one, make_trainer=sft_trainer)
    m1, e1 = read_metrics(one.out_dir), read_metrics(one.out_dir, TrainingRun.EVAL)
    for name, layout, dp in (("ep2", {"ep": 2}, 2), ("pp2", {"pp": 2}, 1)):
        cfg = sft_config(pretrained, tmp_path / name, **layout, **common)
        spawn(2, _sft_rank, cfg.model_dump_json())
        m2, e2 = read_metrics(cfg.out_dir), read_metrics(cfg.out_dir, TrainingRun.EVAL)
        assert [(r["dp"], r["ep"], r["pp"]) for r in m2] == [(dp, layout.get("ep", 1), layout.get("pp", 1))] * 4
        assert [r["data_digest"] for r in m1] == [r["data_digest"] for r in m2]
        # the layouts differ in summation order only (ep2: ~1e-7 relative in a 4-step probe)
        np.testing.assert_allclose([r["loss"] for r in m2], [r["loss"] for r in m1], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose([e["overall"]["loss"] for e in e2], [e["overall"]["loss"] for e in e1],
                                   rtol=1e-5, err_msg=name)  # fmt: skip

    # Resumed from step 2 (into a fresh OUT): steps 3 and 4 are the uninterrupted run's.
    step2 = CheckpointManager(Path(one.out_dir) / "checkpoints").complete()[0]
    resumed = sft_config(pretrained, tmp_path / "resumed", **common)
    run_worker(resumed, resume_from=step2, make_trainer=sft_trainer)
    m3 = read_metrics(resumed.out_dir)
    assert [r["step"] for r in m3] == [3, 4]
    np.testing.assert_allclose([r["loss"] for r in m3], [r["loss"] for r in m1[2:]], rtol=1e-5)


def test_a_post_training_manifest_is_read_by_split_and_checked(tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "data").mkdir()
    files = []
    for split, n in (("train", 5), ("eval", 2)):
        path = tmp_path / "data" / f"chat-{split}.jsonl"
        write_jsonl(path, [conversation(rng) for _ in range(n)])
        raw = path.read_bytes()
        files.append(PosttrainFile(path=f"data/chat-{split}.jsonl", kind="chat", split=split, records=n,
                                   bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest(), words=1))  # fmt: skip
    provenance = Provenance(inputs=["test"], config={}, config_sha256="0" * 64, stages=[],
                            created_at=datetime.now(timezone.utc), flywheel_version="0")  # fmt: skip
    write_posttrain_manifest(str(tmp_path / "posttrain_manifest.json"), PosttrainManifest(
        version=1, format="posttrain", dataset_id="demo", files=files, totals=posttrain_totals(files),
        provenance=provenance))  # fmt: skip
    [(label, train)] = read_chat_sources([str(tmp_path)], "train")
    [(_, held_out)] = read_chat_sources([str(tmp_path / "posttrain_manifest.json")], "eval")
    assert (label, len(train), len(held_out)) == ("demo:train", 5, 2)
    first = json.loads((tmp_path / "data" / "chat-train.jsonl").read_text().splitlines()[0])
    assert train[0]["messages"] == first["messages"]
    (tmp_path / "data" / "chat-train.jsonl").write_text("")  # changed after curation: refused
    with pytest.raises(ValueError, match="sha256"):
        read_chat_sources([str(tmp_path)], "train")
