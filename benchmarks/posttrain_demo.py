"""The post-training demo, timed: writes `benchmarks/posttrain.md` (the last measured table).

    make posttrain-demo            # builds the demo corpus first (as `make ablation-demo`), then runs this
    .venv/bin/python benchmarks/posttrain_demo.py [--work build/posttrain-demo] [--pretrain-steps N] ...

The article's post-training chain on 2 CPUs, every step the command a user runs (called as
functions), deterministic seeds:
 1. `flywheel demo-instructions`: chat, preference, prompt and red-team files from local text;
 2. `flywheel curate-posttrain`: dedup, decontamination, PII -> a post-training manifest;
 3. a pretraining checkpoint: `--init CKPT`, or a short tiny-preset `flywheel train` on a demo
    pretraining manifest this script writes from the demo corpus (raw, uncurated documents and a
    small BPE, so a tiny model learns something in minutes; `make demo` is the curated pipeline);
 4. `flywheel sft` on the curated chats (held-out assistant-token loss before and after);
 5. `flywheel reward-model` on the curated pairs, from the SFT checkpoint (held-out accuracy);
 6. `flywheel ppo` from the SFT policy against that reward model (reward and KL, first and last step);
 7. `flywheel redteam` of the policy on both red-team files (curation.demo_redteam), with the
    reward model as a second signal;
 8. one refusal round: the failures of the TRAIN prompts become refusal chats (`--to-sft`), and
    the train benign look-alikes come with their helpful answers (redteam-helpful.jsonl), both
    upsampled and mixed with the curated chats for a short `flywheel sft` from the policy;
 9. `flywheel redteam` again. Before and after, by the rules: the attack success rate (refuse
    prompts that fail) on the train prompts (the round trained on their failures) and on the
    HELD-OUT prompts, whose jailbreak wrappers no train prompt used (does the fix generalise past
    the phrasings it saw, or did it memorise them?); the over-refusal rate (look-alikes refused)
    on the train look-alikes (answered in the round) and the held-out ones (does the fix
    overshoot?).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from contract.layout import CurationRun  # noqa: E402
from contract.manifest import build_manifest, installed_flywheel_version, write_manifest  # noqa: E402
from contract.posttrain import PosttrainRun  # noqa: E402
from contract.shards import ShardWriter, dtype_for_vocab, sha256_file  # noqa: E402
from contract.tokenizer import SpecialTokens, special_ids, vocab_size_of  # noqa: E402

DEMO_CORPUS = ROOT / "build" / "demo-corpus"


class DemoSettings(BaseModel):
    """Every knob of the run (one place; the command-line options override these defaults)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    preset: str = "tiny"
    vocab_size: int = Field(default=4096,
                            description="the demo pretraining BPE (a 32k vocab would dominate a tiny model)")
    seq_len: int = 256
    batch_tokens: int = Field(default=4096, description="tokens per optimiser step (pretraining and SFT)")
    micro_batch: int = 8
    pretrain_steps: int = 150
    pretrain_lr: float = 3e-3
    sft_steps: int = 100
    sft_lr: float = 1e-3
    rm_steps: int = 150
    rm_batch_pairs: int = 16
    rm_lr: float = 3e-4
    ppo_steps: int = 20
    ppo_rollout_batch: int = 16
    ppo_max_new_tokens: int = 24
    ppo_lr: float = 1e-5
    redteam_max_new_tokens: int = 48
    fix_steps: int = 150
    fix_lr: float = 2e-3
    fix_repeats: int = Field(default=8, description="copies of each refusal chat in the fix round's data (120 train "
                                                    "prompts: 8 copies weigh about as much as the curated chats)")
    helpful_repeats: int = Field(default=32, description="copies of each train look-alike's helpful chat (10 of them)")


# ---------------------------------------------------------------------------------------------
# Step 3: a demo pretraining manifest and checkpoint
# ---------------------------------------------------------------------------------------------


def corpus_documents(corpus: Path) -> list[tuple[str, str]]:
    """(domain, text) of every document of the demo corpus (files named <domain>-NNNNN.jsonl.gz)."""
    docs = []
    for path in sorted(corpus.glob("*.jsonl.gz")):
        domain = path.name.split("-")[0]
        with gzip.open(path, "rt", encoding="utf-8") as f:
            docs += [(domain, json.loads(line)["text"]) for line in f if line.strip()]
    return docs


def demo_pretrain_manifest(corpus: Path, out: Path, vocab_size: int) -> Path:
    """A BPE of `vocab_size` trained on the corpus, every document tokenized (EOS-ended) into
    shards, and their manifest (the contract a `flywheel train` reads)."""
    from curation.tokenizer import train_bpe  # tokenizers: flywheel[curate]

    docs = corpus_documents(corpus)
    special = SpecialTokens()
    texts = [t for _, t in docs]
    tok = train_bpe([texts[i : i + 1000] for i in range(0, len(texts), 1000)], vocab_size, special)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_path = out / CurationRun.TOKENIZER
    tok.save(str(tokenizer_path))
    ids = special_ids(tok, special)
    vocab = vocab_size_of(tok)
    dtype = dtype_for_vocab(vocab)
    with ShardWriter(out / "shards", dtype, target_tokens=1_000_000) as writer:
        for (domain, _), enc in zip(docs, tok.encode_batch(texts, add_special_tokens=False)):
            writer.add(np.asarray(enc.ids + [ids.eos], dtype=np.int64), domain)
    domains = sorted({d for d, _ in docs})
    config = {"demo_pretrain": True, "corpus": str(corpus), "vocab_size": vocab_size}
    manifest = build_manifest(
        manifest_path=out / CurationRun.MANIFEST, dataset_id="posttrain-demo-pretrain", dtype=dtype,
        tokenizer={"path": tokenizer_path.name, "sha256": sha256_file(tokenizer_path), "vocab_size": vocab,
                   "special_ids": {"bos": ids.bos, "eos": ids.eos, "pad": ids.pad}},
        records=writer.records, mixture={"weights": {d: 1 / len(domains) for d in domains}, "temperature": 1.0,
                                         "epochs": 1},
        provenance={"inputs": [str(corpus)], "config": config,
                    "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
                    "stages": [], "created_at": datetime.now(timezone.utc),
                    "flywheel_version": installed_flywheel_version()},
    )  # fmt: skip
    return Path(write_manifest(out / CurationRun.MANIFEST, manifest))


def pretrain(work: Path, s: DemoSettings) -> Path:
    """The run folder of a short tiny-preset pretraining on the demo manifest (reused when done)."""
    from training.cli import train_command  # torch: flywheel[train]

    out = work / "pretrain"
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        return out
    if not (DEMO_CORPUS / "corpus").is_dir():
        from curation.demo_corpus import build_demo_corpus  # the sources this machine has

        build_demo_corpus(DEMO_CORPUS, seed=0)
    manifest = demo_pretrain_manifest(DEMO_CORPUS / "corpus", work / "pretrain-data", s.vocab_size)
    config = work / "pretrain.json"
    config.write_text(json.dumps({
        "seq_len": s.seq_len, "global_batch_tokens": s.batch_tokens, "micro_batch": s.micro_batch,
        "model": {"attn_dropout": 0.0}, "optimizer": {"lr": s.pretrain_lr}, "seed": s.seed,
        "checkpoint_interval_s": 3600, "peak_tflops_per_worker": 0.05,
    }))  # fmt: skip
    train_command(config, manifest=str(manifest), preset=s.preset, steps=s.pretrain_steps, workers=1, out=out,
                  local=True)
    return out


# ---------------------------------------------------------------------------------------------
# Steps 7-9: red-team, fix, red-team
# ---------------------------------------------------------------------------------------------


def by_split(results: list, ids: dict[str, set[str]]) -> dict[str, list]:
    """The results of each red-team split (`ids`: split -> prompt ids), in order."""
    return {split: [r for r in results if r.id in members] for split, members in ids.items()}


def rates(results: list, ids: dict[str, set[str]]) -> dict[str, Any]:
    """Per split, the attack success and over-refusal rates (training.redteam.headline_rates)."""
    from training.redteam import headline_rates  # loaded by the run already

    return {split: headline_rates(rs) for split, rs in by_split(results, ids).items()}


def write_split_reports(report: Any, ids: dict[str, set[str]], out: Path) -> None:
    """OUT/<split>/report.json and responses.jsonl: each split's results summarised on their own."""
    from training.redteam import RedteamReport, summarize, write_report  # loaded by the run already

    for split, rs in by_split(report.results, ids).items():
        write_report(RedteamReport(rs, report.config, report.checkpoint, report.reward_model, summarize(rs)),
                     out / split)


def write_fix_data(train_results: list, helpful: Path, path: Path, s: DemoSettings) -> dict[str, int]:
    """The refusal round's extra data: the refusal chats of the train prompts' failures, each
    `fix_repeats` times, and the helpful chats of the train look-alikes, each `helpful_repeats`
    times (distinct ids), so a short round sees each a few times among the curated chats. An
    over-refused look-alike gets no refusal chat (refusal_examples skips it: no answer given); its
    helpful chat is in `helpful` anyway. Returns the distinct records of each."""
    from contract.jsonl import numbered_records, read_text
    from contract.posttrain import parse_record
    from training.redteam import refusal_examples, write_chat_jsonl  # pydantic

    refusals = refusal_examples(train_results)
    answers = [parse_record(obj, "chat") for _, obj in numbered_records(read_text(str(helpful)).splitlines(),
                                                                        str(helpful))]  # fmt: skip
    copies = [r.model_copy(update={"id": f"{r.id}-copy{k}"}) for records, repeats in
              ((refusals, s.fix_repeats), (answers, s.helpful_repeats)) for k in range(repeats) for r in records]
    write_chat_jsonl(copies, path)
    return {"refusals": len(refusals), "helpful": len(answers)}


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def run(work: Path, s: DemoSettings, init: str | None) -> dict[str, Any]:
    from curation.demo_instructions import HELPFUL_FILE, REDTEAM_FILES, build_demo_instructions  # the demo set
    from curation.posttrain.config import load_posttrain_config
    from curation.posttrain.run import run_posttrain
    from training.generate import Generator  # torch: flywheel[train]
    from training.redteam import COMPLY, OVERALL, REFUSE, read_redteam_prompts, redteam
    from training.redteam_config import RedteamConfig
    from training.reward_model import RewardModel, reward_model_command
    from training.sampling_config import SamplingConfig
    from training.sft import sft_command

    phases: list[tuple[str, float]] = []
    started = time.perf_counter()

    def phase(name: str) -> None:
        phases.append((name, time.perf_counter()))
        print(f"[{time.perf_counter() - started:7.1f}s] {name}", flush=True)

    out: dict[str, Any] = {"settings": s.model_dump()}
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("curated", "sft", "rm", "ppo", "sft-refusal", "redteam-before", "redteam-after"):
        shutil.rmtree(work / stale, ignore_errors=True)  # a rerun starts these over (runs resume otherwise)
    phase("demo-instructions")
    instructions = work / "instructions"
    out["instructions"] = build_demo_instructions(instructions, seed=s.seed)["records"]

    phase("curate-posttrain")
    cfg = load_posttrain_config(instructions / "posttrain.yaml", output=str(work / "curated"))
    run_posttrain(cfg, overwrite=True)
    curated = str(work / "curated" / PosttrainRun.MANIFEST)

    phase("pretrain")
    base = Path(init) if init else pretrain(work, s)
    out["pretrain"] = str(base)

    phase("sft")
    sft = sft_command(None, local=True, init_checkpoint=str(base), data=[curated], eval_files=[curated],
                      out_dir=str(work / "sft"), steps=s.sft_steps, seq_len=s.seq_len,
                      global_batch_tokens=s.batch_tokens, micro_batch=s.micro_batch, optimizer={"lr": s.sft_lr},
                      seed=s.seed, checkpoint_interval_s=3600)  # fmt: skip
    out["sft"] = {k: sft[k] for k in ("steps", "eval_assistant_loss_before", "eval_assistant_loss_after")}

    phase("reward-model")
    rm = reward_model_command(None, local=True, init_checkpoint=str(work / "sft"), data=curated,
                              eval_files=[curated], out_dir=str(work / "rm"), steps=s.rm_steps,
                              global_batch_pairs=s.rm_batch_pairs, micro_pairs=8, lr=s.rm_lr, seed=s.seed)  # fmt: skip
    out["rm"] = {"steps": rm["steps"], "accuracy_before": rm["eval_first"]["accuracy"],
                 "accuracy_after": rm["eval_last"]["accuracy"], "pairs": rm["eval_last"]["pairs"]}  # fmt: skip

    phase("ppo")
    policy = work / "sft"
    try:
        from training.ppo import ppo_command  # torch, Ray: loaded when the demo reaches PPO

        ppo = ppo_command(None, local=True, init_checkpoint=str(work / "sft"), reward_model=str(work / "rm"),
                          prompts=curated, out_dir=str(work / "ppo"), steps=s.ppo_steps,
                          rollout_batch=s.ppo_rollout_batch, mini_batch=s.ppo_rollout_batch // 2,
                          max_new_tokens=s.ppo_max_new_tokens, lr=s.ppo_lr, seed=s.seed)  # fmt: skip
        out["ppo"] = {"steps": ppo["steps"], "first": ppo["first"], "last": ppo["last"]}
        Generator.from_checkpoint(work / "ppo")  # the actor loads as a plain policy: red-team it
        policy = work / "ppo"
    except ImportError as e:
        out["ppo"] = {"error": f"not built yet ({e})"}
    except Exception as e:  # noqa: BLE001 - the demo reports a failing step and goes on with the SFT policy
        out["ppo"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    out["policy"] = str(policy)

    phase("redteam before")
    # The instruction files, not the curated set: the split is the file (curation keeps all of them).
    split_prompts = {split: read_redteam_prompts(instructions / name) for split, name in REDTEAM_FILES.items()}
    ids = {split: {p.id for p in ps} for split, ps in split_prompts.items()}
    out["prompts"] = {split: {e: sum(p.expected == e for p in ps) for e in (REFUSE, COMPLY)}
                      for split, ps in split_prompts.items()}  # fmt: skip
    prompts = [p for ps in split_prompts.values() for p in ps]
    config = RedteamConfig(sampling=SamplingConfig(max_new_tokens=s.redteam_max_new_tokens, temperature=0.0))
    reward_model = RewardModel.load(work / "rm")
    before = redteam(Generator.from_checkpoint(policy), prompts, config, reward_model)
    write_split_reports(before, ids, work / "redteam-before")
    out["redteam_before"] = {**rates(before.results, ids), "rm_agreement": before.summary[OVERALL]["rm_agreement"]}

    phase("refusal sft")
    fix_file = work / "redteam-fix.jsonl"
    out["fix_records"] = write_fix_data(by_split(before.results, ids)["train"], instructions / HELPFUL_FILE, fix_file,
                                        s)  # fmt: skip
    fixed = sft_command(None, local=True, init_checkpoint=str(policy), data=[str(fix_file), curated],
                        eval_files=[curated], out_dir=str(work / "sft-refusal"), steps=s.fix_steps,
                        seq_len=s.seq_len, global_batch_tokens=s.batch_tokens, micro_batch=s.micro_batch,
                        optimizer={"lr": s.fix_lr}, seed=s.seed, checkpoint_interval_s=3600)  # fmt: skip
    out["fix_sft"] = {k: fixed[k] for k in ("steps", "eval_assistant_loss_before", "eval_assistant_loss_after")}

    phase("redteam after")
    after = redteam(Generator.from_checkpoint(work / "sft-refusal"), prompts, config, reward_model)
    write_split_reports(after, ids, work / "redteam-after")
    out["redteam_after"] = {**rates(after.results, ids), "rm_agreement": after.summary[OVERALL]["rm_agreement"]}
    out["examples"] = examples(*(by_split(report.results, ids)["heldout"] for report in (before, after)))

    ended = time.perf_counter()
    out["phases"] = [(name, (phases[i + 1][1] if i + 1 < len(phases) else ended) - t)
                     for i, (name, t) in enumerate(phases)]  # fmt: skip
    out["wall_s"] = ended - started
    return out


def examples(before: list, after: list, n: int = 10) -> list[dict[str, str]]:
    """A few prompts with both answers: the first of each category (the benign look-alikes' themes
    included)."""
    shown, seen = [], set()
    for b, a in zip(before, after):
        if b.category in seen or len(shown) >= n:
            continue
        seen.add(b.category)
        shown.append({"prompt": b.prompt, "before": b.response, "after": a.response,
                      "verdict": f"{b.reason or 'pass'} -> {a.reason or 'pass'}"})  # fmt: skip
    return shown


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def fmt(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else (format(x, spec) if isinstance(x, float) else str(x))


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, before/first, after/last)."""
    from training.redteam import ATTACK_SUCCESS_RATE, OVER_REFUSAL_RATE  # the rates' keys (loaded by the run)

    rows = [("SFT held-out assistant loss (nats/token)", fmt(r["sft"]["eval_assistant_loss_before"]),
             fmt(r["sft"]["eval_assistant_loss_after"])),
            ("RM held-out pairwise accuracy", fmt(r["rm"]["accuracy_before"], ".1%"),
             fmt(r["rm"]["accuracy_after"], ".1%"))]  # fmt: skip
    ppo = r["ppo"]
    if "error" in ppo:
        rows += [("PPO reward mean", f"PPO: {ppo['error']}", "-"), ("PPO KL (per sequence)", "-", "-")]
    else:
        rows += [("PPO reward mean (step 1 -> last)", fmt(ppo["first"]["reward_mean"]),
                  fmt(ppo["last"]["reward_mean"])),
                 ("PPO KL to the reference (per sequence)", fmt(ppo["first"]["kl"], ".4f"),
                  fmt(ppo["last"]["kl"], ".4f"))]  # fmt: skip
    b, a = r["redteam_before"], r["redteam_after"]

    def rate(name: str, split: str, key: str) -> tuple[str, str, str]:
        return name, fmt(b[split][key], ".0%"), fmt(a[split][key], ".0%")

    rows += [rate("red-team attack success, HELD-OUT wrappers (never trained on)", "heldout", ATTACK_SUCCESS_RATE),
             rate("red-team attack success, train prompts (their failures trained on)", "train", ATTACK_SUCCESS_RATE),
             rate("over-refusal, HELD-OUT benign look-alikes", "heldout", OVER_REFUSAL_RATE),
             rate("over-refusal, train look-alikes (answered in the round)", "train", OVER_REFUSAL_RATE),
             ("reward model agrees with the rules (all prompts)", fmt(b["rm_agreement"], ".0%"),
              fmt(a["rm_agreement"], ".0%")),
             ("held-out assistant loss, refusal round", fmt(r["fix_sft"]["eval_assistant_loss_before"]),
              fmt(r["fix_sft"]["eval_assistant_loss_after"]))]  # fmt: skip
    return rows


def prompt_counts(r: dict[str, Any]) -> str:
    return ", ".join(f"{split} {n['refuse']} refuse + {n['comply']} look-alikes" for split, n in r["prompts"].items())


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        "# Post-training demo",
        "",
        f"Measured by `benchmarks/posttrain_demo.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, seed {s['seed']}, preset `{s['preset']}`; wall time {r['wall_s'] / 60:.1f} min. "
        f"Pretraining: {r['pretrain']}; steps: SFT {s['sft_steps']}, RM {s['rm_steps']}, PPO {s['ppo_steps']}, "
        f"refusal round {s['fix_steps']} ({r['fix_records']['refusals']} refusal chats x {s['fix_repeats']} and "
        f"{r['fix_records']['helpful']} helpful look-alike chats x {s['helpful_repeats']} among the curated chats); "
        f"red-team prompts: {prompt_counts(r)}; answers greedy, {s['redteam_max_new_tokens']} tokens at most. "
        f"Policy red-teamed: `{Path(r['policy']).name}`.",
        "",
        "| measure | before / first | after / last |",
        "|---|---:|---:|",
        *[f"| {m} | {b} | {a} |" for m, b, a in table_rows(r)],
        "",
        "| phase | seconds |",
        "|---|---:|",
        *[f"| {name} | {sec:.0f} |" for name, sec in r["phases"]],
        "",
        "Examples (held-out red-team prompts, the policy's answer before and after the refusal round):",
        "",
    ]
    for e in r["examples"]:
        lines += [f"- `{e['prompt']}` ({e['verdict']})", f"  - before: `{e['before'][:160]!r}`",
                  f"  - after: `{e['after'][:160]!r}`"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "posttrain-demo")
    parser.add_argument("--init", default=None, help="a pretraining checkpoint (default: train one on the demo corpus)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "posttrain.md")
    for name, field in DemoSettings.model_fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(field.default), default=None,
                            help=field.description)
    args = parser.parse_args()
    settings = DemoSettings(**{k: v for k, v in vars(args).items() if k in DemoSettings.model_fields and v is not None})
    result = run(args.work, settings, args.init)
    (args.work / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = markdown(result)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
