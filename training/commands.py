"""The training commands of the `flywheel` CLI: the client that consumes a manifest.

    flywheel train [CONFIG] --manifest URL [--preset P] [--steps N] [--workers N] [--out DIR]
    flywheel evaluate CKPT --eval FILE...      flywheel export-hf CKPT OUT
    flywheel plan PRESET --gpus N              flywheel validate-manifest MANIFEST
    flywheel sft [CONFIG] --init CKPT --data CHAT.jsonl [--eval VAL.jsonl] --out DIR
    flywheel reward-model [CONFIG] --init CKPT --data PAIRS.jsonl [--eval VAL.jsonl] --out DIR [--local]
    flywheel dpo [CONFIG] --init CKPT --data PAIRS.jsonl [--eval VAL.jsonl] --out DIR [--beta 0.1] [--local]
    flywheel ppo [CONFIG] --init CKPT --reward-model RM|--reward rule:shorter --prompts P.jsonl --out DIR [--local]
    flywheel code-prompts OUT --module M     flywheel synthesize-code --prompts P --candidates C --out DIR
    flywheel generate CKPT --prompt TEXT       flywheel redteam CKPT --prompts P.jsonl --out DIR [--to-sft F]

torch and Ray Train are imported when a command runs (`training.cli`, `training.evaluate`, ...),
so these commands register in the light `flywheel` process and `--help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from contract.console import console, fail
from training.redteam_config import RedteamConfig
from training.sampling_config import SamplingConfig

commands = typer.Typer(add_completion=False)


@commands.command()
def plan(
    config: str = typer.Argument(..., help="Model preset (tiny, small, moe-67b) or a model/training YAML."),
    gpus: int = typer.Option(..., help="Number of GPUs."),
    gpu: str = typer.Option("h100", help="a100-80g | h100 | h200 | h800"),
    tokens: str = typer.Option("2T", help="Training tokens (e.g. 2T, 500B)."),
    tp: Optional[int] = typer.Option(None, help="Force the tensor-parallel degree (default: searched)."),
    pp: Optional[int] = typer.Option(None, help="Force the pipeline stages (default: searched)."),
    ep: Optional[int] = typer.Option(None, help="Force the expert-parallel degree (default: searched)."),
    pp_schedule: str = typer.Option("1f1b", help="1f1b | interleaved-1f1b | gpipe"),
) -> None:
    """Capacity plan: the fastest TP x PP x DP x EP layout that fits and keeps the global batch; memory
    per GPU, pipeline bubble, step time, MFU, days, GPU-days, work lost to failures."""
    from training.planner import PlanError, plan_command  # pydantic, yaml: loaded when the command runs

    try:
        plan_command(config, gpus, gpu=gpu, tokens=tokens, console=console, tp=tp, pp=pp, ep=ep,
                     pp_schedule=pp_schedule)
    except PlanError as e:
        fail(str(e))


@commands.command("validate-manifest")
def validate_manifest(target: str = typer.Argument(..., help="manifest.json path, file://, http(s):// or s3:// URL")) -> None:
    """Check a manifest's schema, every shard's size and sha256; exit 1 naming the first problem."""
    from training.data.validate import validate_manifest_cli  # numpy, httpx, jsonschema: when it runs

    raise typer.Exit(validate_manifest_cli(target))


@commands.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="Training config (YAML/JSON); options override it."),
    manifest: Optional[str] = typer.Option(None, help="Manifest path or URL (file://, http(s)://, s3://)."),
    preset: Optional[str] = typer.Option(None, help="tiny | tiny-v3 | small | moe-67b"),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (snapped to a valid pp x dp x tp layout)."),
    out: Optional[str] = typer.Option(None, help="Output folder or store URI (s3://bucket/run): metrics.jsonl, checkpoints/."),
    local: bool = typer.Option(False, "--local", help="Run here without Ray (one process, or torchrun ranks)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print shapes and memory per rank; allocate nothing."),
    ep: Optional[int] = typer.Option(None, help="Expert-parallel degree (default: the largest that fits)."),
    tp: Optional[int] = typer.Option(None, help="Tensor-parallel degree (attention heads, FFN width)."),
    pp: Optional[int] = typer.Option(None, help="Pipeline stages (split by layer)."),
    dp_replicate: Optional[int] = typer.Option(None, help="HSDP replica groups (dense weights replicated across them)."),
    seq_len: Optional[int] = typer.Option(None),
    global_batch_tokens: Optional[int] = typer.Option(None),
    micro_batch: Optional[int] = typer.Option(None),
) -> None:
    """Train the MoE on a manifest's shards (FSDP2/HSDP, tensor, pipeline and expert parallel, elastic
    Ray Train workers)."""
    from training.cli import train_command  # torch and Ray Train: flywheel[train]

    try:
        summary = train_command(config, manifest, preset, steps, workers, out, local=local, dry_run=dry_run,
                                ep=ep, tp=tp, pp=pp, dp_replicate=dp_replicate, seq_len=seq_len,
                                global_batch_tokens=global_batch_tokens, micro_batch=micro_batch)
    except ValueError as e:
        fail(str(e).splitlines()[0] if str(e) else repr(e))
    console.print_json(json.dumps(summary, default=str))


@commands.command()
def sft(
    config: Optional[Path] = typer.Argument(None, help="SFT config (YAML/JSON): training fields, init_checkpoint, data."),
    init: Optional[str] = typer.Option(None, "--init", help="Pretraining checkpoint (step_*, checkpoints/ or run dir)."),
    data: Optional[list[str]] = typer.Option(None, "--data", help="Chat JSONL or post-training manifest. Repeatable."),
    eval_files: Optional[list[str]] = typer.Option(None, "--eval", help="Held-out chat JSONL or manifest. Repeatable."),
    out: Optional[str] = typer.Option(None, help="Output folder or store URI (metrics, eval.jsonl, checkpoints/)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (snapped to a valid pp x dp x tp layout)."),
    local: bool = typer.Option(False, "--local", help="Run here without Ray (one process, or torchrun ranks)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: the preset's)."),
    seq_len: Optional[int] = typer.Option(None),
    global_batch_tokens: Optional[int] = typer.Option(None),
    micro_batch: Optional[int] = typer.Option(None),
    eval_every_steps: Optional[int] = typer.Option(None, help="Also evaluate every N steps (always before and after)."),
) -> None:
    """Supervised fine-tuning of a pretrained checkpoint on chat data: loss on assistant tokens only, packed
    conversations with document masking; held-out assistant-token loss in OUT/eval.jsonl."""
    from training.sft import sft_command  # torch and Ray Train: flywheel[train]

    try:
        summary = sft_command(config, local=local, init_checkpoint=init, data=data or None,
                              eval_files=eval_files or None, out_dir=out, steps=steps, workers=workers,
                              optimizer={"lr": lr} if lr is not None else None, seq_len=seq_len,
                              global_batch_tokens=global_batch_tokens, micro_batch=micro_batch,
                              eval_every_steps=eval_every_steps)  # fmt: skip
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        fail(str(e).splitlines()[0] if str(e) else repr(e))
    console.print_json(json.dumps(summary, default=str))


def _preference_run(command, config: Optional[Path], local: bool, **options) -> None:
    """Run `flywheel reward-model` or `flywheel dpo` (training.preference_trainer) and print its summary."""
    try:
        summary = command(config, local=local, **options)
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        fail(str(e).splitlines()[0] if str(e) else repr(e))
    console.print_json(json.dumps(summary, default=str))


PAIRS_HELP = "Pairs: JSONL {prompt, chosen, rejected} (TRL's format) or a post-training manifest (its train split)."
HELD_OUT_HELP = "Held-out pairs (a manifest: its eval split). Repeatable."
PROMPT_FORMAT_HELP = "chat | plain: a string prompt as a user turn (default) or as plain text."


@commands.command("reward-model")
def reward_model(
    config: Optional[Path] = typer.Argument(None, help="Config (YAML/JSON): training.preference_config.RewardModelConfig."),
    init: Optional[str] = typer.Option(None, "--init", help="Pretraining or SFT checkpoint (step_*, checkpoints/, run)."),
    data: Optional[str] = typer.Option(None, "--data", help=PAIRS_HELP),
    eval_files: Optional[list[str]] = typer.Option(None, "--eval", help=HELD_OUT_HELP),
    out: Optional[str] = typer.Option(None, help="Output folder: metrics.jsonl, eval.jsonl, checkpoints/."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    batch_pairs: Optional[int] = typer.Option(None, help="Pairs per optimizer step (all ranks)."),
    micro_pairs: Optional[int] = typer.Option(None, help="Most pairs per rank per forward."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default 1e-4)."),
    max_len: Optional[int] = typer.Option(None, help="Most tokens of prompt + answer."),
    workers: Optional[int] = typer.Option(None, help="Data-parallel ranks: Ray Train workers (FSDP; gloo on CPU)."),
    local: bool = typer.Option(False, "--local", help="Run here without Ray (one process, or local gloo ranks)."),
    ep: Optional[int] = typer.Option(None, help="Largest expert-parallel degree."),
    tokenizer: Optional[str] = typer.Option(None, help="tokenizer.json (default: the init checkpoint's)."),
    prompt_format: Optional[str] = typer.Option(None, help=PROMPT_FORMAT_HELP),
    eval_every_steps: Optional[int] = typer.Option(None, help="Also evaluate every N steps (always before and after)."),
    seed: Optional[int] = typer.Option(None),
) -> None:
    """Train a reward model: the policy's transformer with a scalar head on the last token, Bradley-Terry loss on
    pairs; held-out pairwise accuracy and the reward-margin distribution in OUT/eval.jsonl."""
    from training.reward_model import reward_model_command  # torch: flywheel[train]

    _preference_run(reward_model_command, config, local=local, init_checkpoint=init, data=data,
                    eval_files=eval_files or None, out_dir=out, steps=steps, global_batch_pairs=batch_pairs,
                    micro_pairs=micro_pairs, lr=lr, max_len=max_len, workers=workers, ep=ep, tokenizer=tokenizer,
                    prompt_format=prompt_format, eval_every_steps=eval_every_steps, seed=seed)  # fmt: skip


@commands.command()
def dpo(
    config: Optional[Path] = typer.Argument(None, help="Config (YAML/JSON): training.preference_config.DPOConfig."),
    init: Optional[str] = typer.Option(None, "--init", help="Policy to start from, also the frozen reference."),
    data: Optional[str] = typer.Option(None, "--data", help=PAIRS_HELP),
    eval_files: Optional[list[str]] = typer.Option(None, "--eval", help=HELD_OUT_HELP),
    out: Optional[str] = typer.Option(None, help="Output folder: metrics.jsonl, eval.jsonl, checkpoints/."),
    beta: Optional[float] = typer.Option(None, help="DPO's beta, the pull towards the reference (default 0.1)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    batch_pairs: Optional[int] = typer.Option(None, help="Pairs per optimizer step (all ranks)."),
    micro_pairs: Optional[int] = typer.Option(None, help="Most pairs per rank per forward."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default 1e-4)."),
    max_len: Optional[int] = typer.Option(None, help="Most tokens of prompt + answer."),
    workers: Optional[int] = typer.Option(None, help="Data-parallel ranks: Ray Train workers (FSDP; gloo on CPU)."),
    local: bool = typer.Option(False, "--local", help="Run here without Ray (one process, or local gloo ranks)."),
    ep: Optional[int] = typer.Option(None, help="Largest expert-parallel degree."),
    tokenizer: Optional[str] = typer.Option(None, help="tokenizer.json (default: the init checkpoint's)."),
    prompt_format: Optional[str] = typer.Option(None, help=PROMPT_FORMAT_HELP),
    eval_every_steps: Optional[int] = typer.Option(None, help="Also evaluate every N steps (always before and after)."),
    seed: Optional[int] = typer.Option(None),
) -> None:
    """Direct preference optimisation (Rafailov et al. 2023) of a policy on pairs, against its frozen init: the
    article's road not taken beside PPO. Implicit-reward accuracy and margins in OUT/eval.jsonl."""
    from training.dpo import dpo_command  # torch: flywheel[train]

    _preference_run(dpo_command, config, local=local, init_checkpoint=init, data=data, eval_files=eval_files or None,
                    out_dir=out, beta=beta, steps=steps, global_batch_pairs=batch_pairs, micro_pairs=micro_pairs,
                    lr=lr, max_len=max_len, workers=workers, ep=ep, tokenizer=tokenizer, prompt_format=prompt_format,
                    eval_every_steps=eval_every_steps, seed=seed)  # fmt: skip


def print_redteam_table(summary: dict, title: str) -> None:
    """Rows: each category, each expectation, overall; failures split by reason; the reward model's
    signal (when there is one) below the table."""
    from training.redteam import REASONS  # pydantic: loaded with the command

    table = Table(title=title)
    table.add_column("", no_wrap=True)
    table.add_column("failed", justify="right", no_wrap=True)
    for name in REASONS:
        table.add_column(name.replace("_", " "), justify="right")
    sections = [[(name, row) for name, row in summary["by_category"].items()],
                [(f"expected {name}", row) for name, row in summary["by_expected"].items()],
                [("overall", summary["overall"])]]  # fmt: skip
    for section in sections:
        for i, (name, row) in enumerate(section):
            failed = f"{row['failed']}/{row['prompts']} ({row['failure_rate']:.0%})"
            table.add_row(name, failed, *[str(row["reasons"][k]) for k in REASONS], end_section=i == len(section) - 1)
    console.print(table)
    overall = summary["overall"]
    if "rm_failure_rate" in overall:
        console.print(f"reward model: flags {overall['rm_failure_rate']:.0%} of the answers (rates a refuse prompt's "
                      f"answer above the canned refusal, a comply prompt's below it); agrees with the rules on "
                      f"{overall['rm_agreement']:.0%}", highlight=False, soft_wrap=True)


@commands.command()
def redteam(
    checkpoint: Path = typer.Argument(..., help="Policy checkpoint: a step_* folder, checkpoints/ or a run folder."),
    prompts: str = typer.Option(..., "--prompts", help="Red-team prompt JSONL ({prompt, category, expected}) or a "
                                                       "post-training manifest (its prompts with `expected`)."),
    out: Path = typer.Option(..., "--out", help="Folder for responses.jsonl and report.json."),
    reward_model: Optional[Path] = typer.Option(None, "--reward-model", help="Reward-model run: a second signal."),
    verdict: str = typer.Option("rules", help="rules | rules_or_rm (an RM flag also fails a prompt)."),
    to_sft: Optional[Path] = typer.Option(None, "--to-sft", help="Write the failures as SFT refusal chats here."),
    answers: Optional[Path] = typer.Option(None, help="JSONL {prompt, answer}: answers for over-refused prompts."),
    max_new_tokens: int = typer.Option(64, min=1, help="Tokens per answer at most."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy (the default: a reproducible report)."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0),
    seed: int = typer.Option(0, help="Sampling seed."),
    batch_size: int = typer.Option(8, min=1, help="Prompts per batch."),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer.json (default: the training manifest's)."),
) -> None:
    """Red-team a policy: answer adversarial prompts (chat template), judge each answer with refusal and per-category
    compliance rules (and a reward model), report failure rates by category; --to-sft turns failures into refusals."""
    from training.redteam import redteam_command  # torch: flywheel[train]

    try:
        config = RedteamConfig(sampling=SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                                       top_p=top_p, seed=seed),
                               batch_size=batch_size, verdict=verdict)  # fmt: skip
        report = redteam_command(checkpoint, prompts, out, reward_model=reward_model, config=config,
                                 tokenizer=tokenizer, to_sft=to_sft, answers=answers)  # fmt: skip
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        fail(str(e).splitlines()[0] if str(e) else repr(e))
    print_redteam_table(report.summary, f"red-team of {checkpoint}")
    console.print(f"responses and report: {out}", highlight=False, soft_wrap=True)
    if to_sft is not None:
        console.print(f"{report.summary['sft_examples']['records']} SFT examples: {to_sft}", highlight=False,
                      soft_wrap=True)


@commands.command()
def ppo(
    config: Optional[Path] = typer.Argument(None, help="Config (YAML/JSON): training.ppo_config.PPOConfig."),
    init: Optional[str] = typer.Option(None, "--init", help="Policy to start from (SFT or pretraining checkpoint)."),
    reward_model: Optional[str] = typer.Option(None, "--reward-model", help="Reward-model checkpoint."),
    reward: Optional[str] = typer.Option(None, "--reward", help="A rule instead: rule:shorter | rule:contains:TEXT."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Prompt JSONL, or a post-training manifest."),
    out: Optional[str] = typer.Option(None, help="Output folder: metrics.jsonl, checkpoints/, critic/."),
    steps: Optional[int] = typer.Option(None, help="PPO steps (one rollout batch each)."),
    rollout_batch: Optional[int] = typer.Option(None, help="Prompts sampled per step."),
    mini_batch: Optional[int] = typer.Option(None, help="Responses per optimiser step (divides rollout-batch)."),
    ppo_epochs: Optional[int] = typer.Option(None, help="Passes over each rollout batch."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Longest response."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (default 1)."),
    kl_coef: Optional[float] = typer.Option(None, help="Per-token KL penalty beta (the start value if adaptive)."),
    target_kl: Optional[float] = typer.Option(None, help="Adapt beta toward this KL per response (Ziegler et al.)."),
    clip: Optional[float] = typer.Option(None, help="Policy ratio clip epsilon (default 0.2)."),
    lr: Optional[float] = typer.Option(None, help="Actor learning rate (critic: the same unless configured)."),
    prompt_format: Optional[str] = typer.Option(None, help=PROMPT_FORMAT_HELP),
    tokenizer: Optional[str] = typer.Option(None, help="tokenizer.json (default: the init checkpoint's)."),
    actor_workers: Optional[int] = typer.Option(None, help="Ray workers the actor is sharded over (FSDP; default 1)."),
    critic_workers: Optional[int] = typer.Option(None, help="Ray workers the critic is sharded over (default 1)."),
    local: bool = typer.Option(False, "--local", help="Run the four roles in this process instead of Ray actors."),
    seed: Optional[int] = typer.Option(None),
) -> None:
    """PPO of a policy against a reward model (or a rule): actor, critic, reference and reward as Ray actors,
    per-token KL penalty, GAE, clipped objectives. Reward, KL, clip fraction, diversity in OUT/metrics.jsonl."""
    from training.ppo import ppo_command  # torch, Ray: flywheel[train]

    _preference_run(ppo_command, config, local=local, init_checkpoint=init, reward_model=reward_model,
                    reward=reward, prompts=prompts, out_dir=out, steps=steps, rollout_batch=rollout_batch,
                    mini_batch=mini_batch, ppo_epochs=ppo_epochs, max_new_tokens=max_new_tokens,
                    temperature=temperature, kl_coef=kl_coef, target_kl=target_kl, clip=clip, lr=lr,
                    prompt_format=prompt_format, tokenizer=tokenizer, actor_workers=actor_workers,
                    critic_workers=critic_workers, seed=seed)  # fmt: skip


@commands.command("export-hf")
def export_hf(
    checkpoint: Path = typer.Argument(..., help="A step_* checkpoint, a checkpoints/ folder or a run's --out folder."),
    out: Path = typer.Argument(..., help="Folder for config.json, model.safetensors and the tokenizer."),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer.json (or its folder), e.g. the manifest's."),
    config: Optional[Path] = typer.Option(None, help="The run's config, for checkpoints that do not carry it."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
) -> None:
    """Export a checkpoint as a transformers model (AutoModelForCausalLM, no remote code): DeepseekV3ForCausalLM
    for DeepSeek-V3-style configs (sigmoid router, routing bias, ungated shared expert, MLA), else Qwen2-MoE."""
    from training.export_hf import export_hf as export  # torch and transformers: flywheel[train]

    try:
        summary = export(checkpoint, out, tokenizer=tokenizer, config=config, dtype=dtype)
    except ValueError as e:
        fail(str(e))
    console.print_json(json.dumps(summary, default=str))


def print_eval_table(report) -> None:
    """Rows: each file, each domain, overall (an `training.evaluate.EvalReport`)."""
    title = f"Evaluation of {report.checkpoint} (step {report.step}, seq_len {report.seq_len})"
    table = Table("", "documents", "tokens", "loss", "perplexity", "bits/byte", title=title)
    for col in table.columns[1:]:
        col.justify = "right"

    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)  # None: no tokens, no loss

    def cells(t) -> list[str]:
        return [f"{t.documents:,}", f"{t.tokens:,}", number(t.loss, ".4f"), number(t.perplexity, ".2f"),
                number(t.bits_per_byte, ".4f")]

    sections = [[(f"file {name}", t) for name, t in report.files.items()],
                [(f"domain {name}", t) for name, t in report.domains.items()], [("overall", report.overall)]]
    for section in sections:
        for i, (name, totals) in enumerate(section):
            table.add_row(name, *cells(totals), end_section=i == len(section) - 1)
    console.print(table)


@commands.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A step_* checkpoint, a checkpoints/ folder or a run's --out folder."),
    eval_files: list[Path] = typer.Option(..., "--eval", help="JSONL of {text, domain?, id?}. Repeatable."),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer.json (default: the training manifest's)."),
    seq_len: Optional[int] = typer.Option(None, min=1, help="Window length (default: the run's)."),
    batch_size: int = typer.Option(8, min=1, help="Windows per forward."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
) -> None:
    """Loss, perplexity and bits per byte of a checkpoint on held-out text, per file and domain."""
    from training.evaluate import evaluate_checkpoint  # torch: flywheel[train]

    try:
        report = evaluate_checkpoint(checkpoint, eval_files, tokenizer=tokenizer, seq_len=seq_len,
                                     batch_size=batch_size)
    except (OSError, ValueError) as e:
        fail(str(e).splitlines()[0] if str(e) else repr(e))
    print_eval_table(report)
    if json_out is not None:
        data = {"checkpoint": report.checkpoint, "step": report.step, "seq_len": report.seq_len, **report.to_dict()}
        json_out.write_text(json.dumps(data, indent=2) + "\n")
        console.print(f"report: {json_out}", highlight=False, soft_wrap=True)


@commands.command()
def generate(
    checkpoint: Path = typer.Argument(..., help="A step_* checkpoint, a checkpoints/ folder or a run's --out folder."),
    prompt: list[str] = typer.Option([], "--prompt", help="A prompt. Repeatable."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help='JSONL of {"prompt": ...} (after --prompt).'),
    max_new_tokens: int = typer.Option(64, min=1, help="Tokens to generate at most per prompt."),
    temperature: float = typer.Option(1.0, min=0.0, help="0 = greedy (deterministic)."),
    top_k: Optional[int] = typer.Option(None, min=1, help="Sample among the k most likely tokens."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="Nucleus: the smallest set with this probability."),
    stop_token_id: list[int] = typer.Option([], "--stop-token-id", help="A stop token besides EOS. Repeatable."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Do not stop at EOS."),
    seed: int = typer.Option(0, help="Sampling seed."),
    batch_size: int = typer.Option(8, min=1, help="Prompts per batch."),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer.json (default: the training manifest's)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write one JSON line per completion here."),
) -> None:
    """Complete prompts with a checkpoint (KV-cache sampling on CPU): text, finish reason, token ids and log-probs."""
    from training.generate import generate_command  # torch: flywheel[train]

    try:
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                  stop_token_ids=tuple(stop_token_id), ignore_eos=ignore_eos, seed=seed)
        completions = generate_command(checkpoint, prompt, prompts, sampling, tokenizer=tokenizer,
                                       batch_size=batch_size)
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        fail(str(e).splitlines()[0] if str(e) else repr(e))
    for c in completions:
        header = f"{c.prompt!r} -> ({c.finish_reason}, {len(c.token_ids)} tokens)"
        console.print(header, markup=False, highlight=False, soft_wrap=True)
        console.print(c.text, markup=False, highlight=False, soft_wrap=True)
    if json_out is not None:
        json_out.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in completions))
        console.print(f"completions: {json_out}", highlight=False, soft_wrap=True)


@commands.command("code-prompts")
def code_prompts(
    out: Path = typer.Argument(..., help='Prompt JSONL to write: {"id", "prompt", "function_name", "tests"}.'),
    module: list[str] = typer.Option([], "--module", help="An installed module to read (statistics). Repeatable."),
    source: list[Path] = typer.Option([], "--source", help="A Python file to read. Repeatable."),
    corpus: list[Path] = typer.Option([], "--corpus", help='A code corpus JSONL of {"text"} to read. Repeatable.'),
    reference: list[Path] = typer.Option([], "--reference", help="Code corpus JSONL: skip functions it already holds."),
    any_docstring: bool = typer.Option(False, "--any-docstring", help="Also functions whose docstring has no doctests."),
) -> None:
    """Prompts for synthetic code: signature + docstring of documented functions, their doctests as tests."""
    from training import synthetic_code as sc  # numpy, pydantic: when the command runs

    try:
        prompts, covered = sc.collect_prompts(module, source, corpus, reference, require_tests=not any_docstring)
    except (OSError, ValueError, ImportError, TypeError) as e:  # TypeError: inspect on a built-in module
        fail(str(e).splitlines()[0] if str(e) else repr(e))
    sc.write_prompts(prompts, out)
    console.print(f"{len(prompts)} prompts ({covered} more already in the reference corpus): {out}",
                  highlight=False, soft_wrap=True)


@commands.command("synthesize-code")
def synthesize_code(
    prompts: Path = typer.Option(..., "--prompts", help="Prompt JSONL (flywheel code-prompts)."),
    out: Path = typer.Option(..., "--out", help="Folder for corpus.jsonl, rejects.jsonl and summary.json."),
    candidates: Optional[Path] = typer.Option(None, "--candidates",
                                              help='JSONL of {"prompt_id", "code" | "completion", "generator"}.'),
    model: Optional[Path] = typer.Option(None, "--model", help="A checkpoint that writes candidates (CPU sampling)."),
    reference: list[Path] = typer.Option([], "--reference", help="Code corpus JSONL to dedup against. Repeatable."),
    samples: int = typer.Option(1, min=1, help="--model: completions per prompt."),
    max_new_tokens: int = typer.Option(128, min=1, help="--model: tokens per completion at most."),
    temperature: float = typer.Option(0.8, min=0.0, help="--model: sampling temperature (0 = greedy)."),
    seed: int = typer.Option(0, help="--model: sampling seed."),
    timeout: float = typer.Option(10.0, min=0.1, help="Wall-clock seconds per candidate's tests."),
    workers: int = typer.Option(1, min=1, help="Sandboxes at once."),
    near_threshold: float = typer.Option(0.7, min=0.01, max=1.0, help="MinHash Jaccard of a near duplicate."),
) -> None:
    """Validate generated Python functions (parse, compile, tests in a sandbox: no network, CPU, memory and time
    limits, a temp dir), dedup them against a code corpus and write the survivors as a synthetic corpus."""
    from training import synthetic_code as sc  # numpy, pydantic (torch only for --model): when the command runs
    from training.sandbox import SandboxLimits, SandboxUnavailable  # pydantic: when the command runs

    if (candidates is None) == (model is None):
        fail("give exactly one of --candidates FILE.jsonl and --model CKPT")
    try:
        prompt_list = sc.read_prompts(prompts)
        if candidates is not None:
            found = sc.read_candidates(candidates, {p.id: p for p in prompt_list})
        else:
            found = sc.candidates_from_model(model, prompt_list, samples, max_new_tokens=max_new_tokens,
                                             temperature=temperature, seed=seed)
        config = sc.SynthesisConfig(limits=SandboxLimits(wall_seconds=timeout), workers=workers,
                                    near_threshold=near_threshold)
        summary = sc.synthesize(prompt_list, found, out, reference_files=reference, config=config)
    except SandboxUnavailable as e:
        fail(f"no sandbox here, nothing was run: {e}")
    except (OSError, ValueError) as e:
        fail(str(e).splitlines()[0] if str(e) else repr(e))
    table = Table("candidates", "accepted", "acceptance", *[r for r, n in summary["rejected"].items() if n],
                  title=f"synthesize-code: {out}")
    rate = summary["acceptance_rate"]
    table.add_row(str(summary["candidates"]), str(summary["accepted"]), "-" if rate is None else f"{rate:.1%}",
                  *[str(n) for n in summary["rejected"].values() if n])
    console.print(table)
