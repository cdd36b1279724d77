"""The training commands of the `flywheel` CLI: the client that consumes a manifest.

    flywheel train [CONFIG] --manifest URL [--preset P] [--steps N] [--workers N] [--out DIR]
    flywheel evaluate CKPT --eval FILE...      flywheel export-hf CKPT OUT
    flywheel plan PRESET --gpus N              flywheel validate-manifest MANIFEST

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

commands = typer.Typer(add_completion=False)


@commands.command()
def plan(
    config: str = typer.Argument(..., help="Model preset (tiny, small, moe-67b) or a model/training YAML."),
    gpus: int = typer.Option(..., help="Number of GPUs."),
    gpu: str = typer.Option("h100", help="a100-80g | h100 | h200 | h800"),
    tokens: str = typer.Option("2T", help="Training tokens (e.g. 2T, 500B)."),
) -> None:
    """Capacity plan: memory per GPU, step time, MFU, days, GPU-days, work lost to failures."""
    from training.planner import PlanError, plan_command  # pydantic, yaml: loaded when the command runs

    try:
        plan_command(config, gpus, gpu=gpu, tokens=tokens, console=console)
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
    preset: Optional[str] = typer.Option(None, help="tiny | small | moe-67b"),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (snapped to a valid FSDP x EP layout)."),
    out: Optional[str] = typer.Option(None, help="Output folder or store URI (s3://bucket/run): metrics.jsonl, checkpoints/."),
    local: bool = typer.Option(False, "--local", help="Run here without Ray (one process, or torchrun ranks)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print shapes and memory per rank; allocate nothing."),
    ep: Optional[int] = typer.Option(None, help="Expert-parallel degree (default: the largest that fits)."),
    seq_len: Optional[int] = typer.Option(None),
    global_batch_tokens: Optional[int] = typer.Option(None),
    micro_batch: Optional[int] = typer.Option(None),
) -> None:
    """Train the MoE on a manifest's shards (FSDP2 + expert parallel, elastic Ray Train workers)."""
    from training.cli import train_command  # torch and Ray Train: flywheel[train]

    try:
        summary = train_command(config, manifest, preset, steps, workers, out, local=local, dry_run=dry_run,
                                ep=ep, seq_len=seq_len, global_batch_tokens=global_batch_tokens,
                                micro_batch=micro_batch)
    except ValueError as e:
        fail(str(e).splitlines()[0] if str(e) else repr(e))
    console.print_json(json.dumps(summary, default=str))


@commands.command("export-hf")
def export_hf(
    checkpoint: Path = typer.Argument(..., help="A step_* checkpoint, a checkpoints/ folder or a run's --out folder."),
    out: Path = typer.Argument(..., help="Folder for config.json, model.safetensors and the tokenizer."),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer.json (or its folder), e.g. the manifest's."),
    config: Optional[Path] = typer.Option(None, help="The run's config, for checkpoints that do not carry it."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
) -> None:
    """Export a checkpoint as a transformers Qwen2-MoE model (AutoModelForCausalLM, no remote code)."""
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
