"""The `flywheel` command.

Every command imports its machinery lazily, so `flywheel train` works where only the training
client (`flywheel[train]`) is installed and `flywheel --help` starts in a fraction of a second.
Errors the user can fix (bad config, missing input) exit 2 with one line; bugs still traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from contract.layout import AblationRun, CurationRun

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Flywheel: curate pretraining data on Ray and train a DeepSeek-style MoE on it.")
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_stats_table(stats) -> None:
    from curation.stats import SEED_TABLE_HEADER, seed_table_rows

    table = Table(*SEED_TABLE_HEADER, title=f"Curation run {stats.run_id} (tokens: whitespace words)")
    for col in table.columns[2:]:
        col.justify = "right"
    rows = seed_table_rows(stats)
    for i, row in enumerate(rows):
        table.add_row(*row, end_section=(i == len(rows) - 2))
    console.print(table)


@app.command()
def curate(
    config: Path = typer.Argument(..., help="Pipeline config (YAML)."),
    input: Optional[list[str]] = typer.Option(None, "--input", "-i", help="Input path/URI; replaces the config's inputs. Repeatable."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output folder/URI; replaces the config's output."),
    overwrite: bool = typer.Option(False, help="Replace an existing, non-empty output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run a curation pipeline and print the per-stage table."""
    import logging

    from curation.config import ConfigError, load_config
    from curation.io.files import InputError
    from curation.pipeline import OutputError, Pipeline

    try:
        cfg = load_config(config, inputs=list(input) if input else None, output=output)
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        logging.getLogger("ray").setLevel(logging.WARNING)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), console=err_console, disable=quiet, transient=True)
        task = progress.add_task("starting", total=len(cfg.stages) + 1)

        def on_event(event: str, info: dict) -> None:
            if event == "stage_start":
                progress.update(task, description=f"stage [bold]{info['name']}[/]")
            elif event == "stage_done":
                s = info["stats"]
                progress.update(task, advance=1)
                progress.console.print(f"  {s.name:<24} {s.docs_in:>10,} -> {s.docs_out:>10,} docs  {s.seconds:8.1f}s",
                                       highlight=False)
            elif event == "write_start":
                progress.update(task, description="writing output")

        pipeline = Pipeline(cfg, overwrite=overwrite, progress=on_event)
        with progress:
            result = pipeline.run()
    except (ConfigError, InputError, OutputError) as e:
        fail(str(e))
    print_stats_table(result.stats)
    # soft_wrap: paths stay on one line (copyable) however narrow the terminal is
    console.print(f"kept documents: {result.data_dir}\nrejects:        {result.rejects_dir}\n"
                  f"stats:          {result.stats_path}", highlight=False, soft_wrap=True)
    if "tokenize" in result.extra:
        console.print(f"manifest:       {result.extra['tokenize']}", highlight=False, soft_wrap=True)


@app.command()
def stats(output: str = typer.Argument(..., help="Output folder of a curation run.")) -> None:
    """Print the per-stage table of a finished run (its stats.json)."""
    from curation.io.files import filesystem_for
    from curation.stats import RunStats

    fs, root = filesystem_for(output)
    try:
        with fs.open_input_stream(CurationRun(root).stats) as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        fail(f"no stats.json in {output}")
    print_stats_table(RunStats.from_json(data))


@app.command()
def inspect(
    output: str = typer.Argument(..., help="Output folder of a curation run."),
    doc_id: str = typer.Argument(..., help="Document id."),
    width: int = typer.Option(1200, help="Characters of each text to show."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
) -> None:
    """Why is a document gone: stage, reason, detail, and the kept copy's text side by side."""
    from rich.panel import Panel

    from curation.explain import explain

    answer = explain(output, doc_id)
    if as_json:
        console.print_json(json.dumps(answer, default=str))
        return
    if answer["status"] == "unknown":
        fail(f"no document {doc_id!r} in {output} (neither kept nor rejected)", code=1)
    if answer["status"] == "kept":
        doc = answer["document"]
        console.print(f"[green]kept[/]: {doc_id} ({doc['domain']}, {doc['source']})")
        console.print(Panel(doc["text"][:width], title=doc_id))
        return
    console.print(f"[red]dropped[/] by stage [bold]{answer['stage']}[/], reason [bold]{answer['reason']}[/]",
                  highlight=False)
    console.print_json(json.dumps(answer["detail"]))
    panels = [Panel(answer["text"][:width], title=f"dropped: {doc_id}")]
    if "kept" in answer:
        k = answer["kept"]
        panels.append(Panel((k.get("text") or "")[:width], title=f"{k['status']}: {k['id']}"))
    grid = Table.grid(expand=True, padding=(0, 1))
    for _ in panels:
        grid.add_column(ratio=1)
    grid.add_row(*panels)
    console.print(grid)


@app.command("train-lm")
def train_lm(
    domain: str = typer.Option(..., help="Domain the model scores (web, code, books, ...)."),
    input: str = typer.Option(..., "--input", help="Reference text: JSONL(.gz/.zst) with a text field."),
    out: Path = typer.Option(..., help="Where to write the ARPA model."),
    order: int = typer.Option(5, help="n-gram order."),
    text_field: str = typer.Option("text", help="Field holding the text."),
    tokenizer: Optional[str] = typer.Option(None, help="prose|code (default: code for the code domain)."),
) -> None:
    """Estimate a modified Kneser-Ney n-gram model (ARPA, loaded by kenlm) for one domain."""
    from curation.lm import train_lm as train

    try:
        stats = train(domain, input, str(out), order=order, text_field=text_field, kind=tokenizer)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    console.print_json(json.dumps(stats, default=str))


@app.command("train-classifier")
def train_classifier(
    input: str = typer.Argument(..., help="Labelled JSONL (text + label field)."),
    out: Path = typer.Argument(..., help="Where to write the fastText model (.bin)."),
    label_field: str = typer.Option("domain", help="Field holding the label."),
    text_field: str = typer.Option("text", help="Field holding the text."),
    valid_fraction: float = typer.Option(0.1, help="Held-out fraction for the reported accuracy."),
    seed: int = typer.Option(0),
    epoch: int = typer.Option(25),
    quantize: bool = typer.Option(False, help="Write a quantized (.ftz-size) model."),
) -> None:
    """Train a supervised fastText domain/quality classifier (used by the language stage)."""
    from curation.classifier import train_classifier as train

    try:
        stats = train(input, str(out), label_field=label_field, text_field=text_field,
                      valid_fraction=valid_fraction, seed=seed, epoch=epoch, quantize=quantize)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    console.print_json(json.dumps(stats, default=str))


@app.command("mixture-plan")
def mixture_plan(
    output: str = typer.Argument(..., help="Output folder of a curation run (reads data/*.parquet)."),
    temperature: float = typer.Option(1.0, help="T: weights ∝ n_d^(1/T); 1 natural, larger flatter."),
    multiplier: Optional[list[str]] = typer.Option(None, help="DOMAIN=FACTOR, e.g. code=2. Repeatable."),
    max_epochs: float = typer.Option(1.5, help="Cap on expected repeats of any document."),
    total_tokens: Optional[int] = typer.Option(None, help="Token budget (default: as many as the caps allow)."),
    unit: str = typer.Option("tokens", help="tokens|documents"),
) -> None:
    """Print the temperature-sampling plan for a finished run without running it."""
    from curation.mixture_plan import mixture_plan_cli

    multipliers = {}
    for item in multiplier or []:
        domain, _, factor = item.partition("=")
        try:
            multipliers[domain] = float(factor)
        except ValueError:
            fail(f"--multiplier {item!r}: expected DOMAIN=FACTOR")
    try:
        mixture_plan_cli(output, temperature, multipliers, max_epochs, total_tokens, unit=unit)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))


@app.command()
def plan(
    config: str = typer.Argument(..., help="Model preset (tiny, small, seed-67b) or a model/training YAML."),
    gpus: int = typer.Option(..., help="Number of GPUs."),
    gpu: str = typer.Option("h100", help="a100-80g | h100 | h200 | h800"),
    tokens: str = typer.Option("2T", help="Training tokens (e.g. 2T, 500B)."),
) -> None:
    """Capacity plan: memory per GPU, step time, MFU, days, GPU-days, work lost to failures."""
    from training.planner import PlanError, plan_command

    try:
        plan_command(config, gpus, gpu=gpu, tokens=tokens, console=console)
    except PlanError as e:
        fail(str(e))


@app.command("demo-corpus")
def demo_corpus(
    out: Path = typer.Argument(..., help="Folder to write the corpus into."),
    seed: int = typer.Option(0, help="Seed of the injected duplicates, sentences and PII."),
    min_bytes: int = typer.Option(20_000_000, help="Stop adding real text past this many bytes."),
    reference: bool = typer.Option(True, help="Also write reference/<domain>.jsonl for train-lm."),
) -> None:
    """Build the offline multi-domain demo corpus from text this machine already has."""
    from curation.demo_corpus import build_demo_corpus, build_reference_texts

    summary = build_demo_corpus(out, seed=seed, min_bytes=min_bytes)
    if reference:
        summary["reference"] = build_reference_texts(out)
    console.print_json(json.dumps(summary))


@app.command("validate-manifest")
def validate_manifest(target: str = typer.Argument(..., help="manifest.json path, file:// or http(s):// URL")) -> None:
    """Check a manifest's schema, every shard's size and sha256; exit 1 naming the first problem."""
    from training.data.validate import validate_manifest_cli

    raise typer.Exit(validate_manifest_cli(target))


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="Training config (YAML/JSON); options override it."),
    manifest: Optional[str] = typer.Option(None, help="Manifest path or URL (file://, http(s)://, s3://)."),
    preset: Optional[str] = typer.Option(None, help="tiny | small | seed-67b"),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    workers: Optional[int] = typer.Option(None, help="Ray Train workers (snapped to a valid FSDP x EP layout)."),
    out: Optional[Path] = typer.Option(None, help="Output folder: metrics.jsonl, checkpoints/."),
    local: bool = typer.Option(False, "--local", help="Run here without Ray (one process, or torchrun ranks)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print shapes and memory per rank; allocate nothing."),
    ep: Optional[int] = typer.Option(None, help="Expert-parallel degree (default: the largest that fits)."),
    seq_len: Optional[int] = typer.Option(None),
    global_batch_tokens: Optional[int] = typer.Option(None),
    micro_batch: Optional[int] = typer.Option(None),
) -> None:
    """Train the MoE on a manifest's shards (FSDP2 + expert parallel, elastic Ray Train workers)."""
    from training.cli import train_command

    try:
        summary = train_command(config, manifest, preset, steps, workers, out, local=local, dry_run=dry_run,
                                ep=ep, seq_len=seq_len, global_batch_tokens=global_batch_tokens,
                                micro_batch=micro_batch)
    except ValueError as e:
        fail(str(e).splitlines()[0] if str(e) else repr(e))
    console.print_json(json.dumps(summary, default=str))


@app.command("export-hf")
def export_hf(
    checkpoint: Path = typer.Argument(..., help="A step_* checkpoint, a checkpoints/ folder or a run's --out folder."),
    out: Path = typer.Argument(..., help="Folder for config.json, model.safetensors and the tokenizer."),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer.json (or its folder), e.g. the manifest's."),
    config: Optional[Path] = typer.Option(None, help="The run's config, for checkpoints that do not carry it."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
) -> None:
    """Export a checkpoint as a transformers Qwen2-MoE model (AutoModelForCausalLM, no remote code)."""
    from training.export_hf import export_hf as export

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


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A step_* checkpoint, a checkpoints/ folder or a run's --out folder."),
    eval_files: list[Path] = typer.Option(..., "--eval", help="JSONL of {text, domain?, id?}. Repeatable."),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer.json (default: the training manifest's)."),
    seq_len: Optional[int] = typer.Option(None, min=1, help="Window length (default: the run's)."),
    batch_size: int = typer.Option(8, min=1, help="Windows per forward."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
) -> None:
    """Loss, perplexity and bits per byte of a checkpoint on held-out text, per file and domain."""
    from training.evaluate import evaluate_checkpoint

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


def print_ablation_table(result: dict) -> None:
    """variant | docs kept | tokens | epochs | held-out loss per domain | overall (lowest in bold)."""
    from rich.table import Table

    domains = result["domains"]
    table = Table(title=f"held-out loss (nats/token) after {result['steps']} steps x {result['tokens_per_step']:,} "
                        f"tokens, preset {result['preset']}, seed {result['seed']}")
    for col in ["variant", "docs kept", "tokens", "epochs", *domains, "overall"]:
        table.add_column(col, justify="left" if col == "variant" else "right")
    columns = [*domains, "overall"]
    rows = {r["variant"]: [r["loss"].get(d) for d in domains] + [r["overall"]] for r in result["table"]}
    best = [min((vals[i] for vals in rows.values() if vals[i] is not None), default=None) for i in range(len(columns))]
    for v in result["variants"]:
        cells = [f"[bold]{x:.4f}[/]" if x is not None and x == best[i] else ("-" if x is None else f"{x:.4f}")
                 for i, x in enumerate(rows[v["name"]])]
        epochs = "-" if v["epochs"] is None else f"{v['epochs']:.2f}"
        table.add_row(v["name"], f"{v['docs_kept']:,}", f"{v['tokens']:,}", epochs, *cells)
    console.print(table)
    leak = result["leakage"]
    console.print(f"held-out: {leak['held_out_docs']} docs in {len(domains)} domains; removed from the training pool "
                  f"as near-duplicates (Jaccard >= {leak['near_duplicate_jaccard']}): "
                  f"{leak['removed_from_training_pool']}; near-duplicate pairs left in any training set: "
                  f"{leak['pairs_found']}", highlight=False, soft_wrap=True)


@app.command()
def ablate(
    config: Path = typer.Argument(..., help="Ablation config (YAML): corpus, variants, train, token_budget."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output folder; replaces the config's."),
    token_budget: Optional[int] = typer.Option(None, min=1, help="Tokens each variant trains on."),
    parallel: Optional[int] = typer.Option(None, min=1, help="Variants trained at once."),
) -> None:
    """Curate each variant, train the same model on each, compare held-out loss per domain."""
    import logging

    from curation.config import ConfigError
    from curation.io.files import InputError
    from curation.pipeline import OutputError
    from training.ablation.config import load_ablation_config
    from training.ablation.runner import run_ablation

    logging.getLogger("ray").setLevel(logging.WARNING)
    try:
        cfg = load_ablation_config(config, output=output, token_budget=token_budget, parallel=parallel)
        with err_console.status("ablation: starting") as status:
            result = run_ablation(cfg, progress=lambda phase: status.update(f"ablation: {phase}"),
                                  base_dir=config.parent)
    except (ConfigError, InputError, OutputError, ValueError) as e:
        fail(str(e).splitlines()[0] if str(e) else repr(e))
    print_ablation_table(result)
    console.print(f"result: {AblationRun(str(cfg.output)).result}", highlight=False, soft_wrap=True)


@app.command()
def demo(
    corpus: Path = typer.Option(Path("build/demo-corpus/corpus"), help="Folder of the demo corpus files."),
    config: Path = typer.Option(Path("curation/configs/demo.yaml"), help="Pipeline config of the job."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    home: Path = typer.Option(Path("flywheel-data"), help="The service's data folder (FLYWHEEL_HOME)."),
    exit_after: bool = typer.Option(False, "--exit-after", envvar="FLYWHEEL_DEMO_EXIT",
                                    help="Stop the service once the job has ended."),
) -> None:
    """Start the service, upload the demo corpus through the API, run the pipeline as a job."""
    from api.demo import run_demo

    raise typer.Exit(run_demo(corpus, config, host, port, home, exit_after))


def _register_groups() -> None:
    from api.cli import register  # imports only typer/rich: the service loads when used

    register(app)


_register_groups()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
