"""The curation commands of the `flywheel` CLI: run a pipeline, read its results, build its models.

    flywheel curate CONFIG [--input X]... [--output DIR] [--overwrite]
    flywheel stats OUT          flywheel inspect OUT DOC_ID          flywheel mixture-plan OUT
    flywheel train-lm ...       flywheel train-classifier ...        flywheel demo-corpus DIR

Each command imports its machinery when it runs (Ray, KenLM, fastText), so `flywheel --help`
starts in a fraction of a second. Errors the user can fix exit 2 with one line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contract.console import console, err_console, fail
from contract.layout import CurationRun
from curation.stats import REMOVAL_TABLE_HEADER, RunStats, removal_table_rows

commands = typer.Typer(add_completion=False)


def print_stats_table(stats) -> None:
    table = Table(*REMOVAL_TABLE_HEADER, title=f"Curation run {stats.run_id} (tokens: whitespace words)")
    for col in table.columns[2:]:
        col.justify = "right"
    rows = removal_table_rows(stats)
    for i, row in enumerate(rows):
        table.add_row(*row, end_section=(i == len(rows) - 2))
    console.print(table)


@commands.command()
def curate(
    config: Path = typer.Argument(..., help="Pipeline config (YAML)."),
    input: Optional[list[str]] = typer.Option(None, "--input", "-i", help="Input path/URI; replaces the config's inputs. Repeatable."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output folder/URI; replaces the config's output."),
    overwrite: bool = typer.Option(False, help="Replace an existing, non-empty output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run a curation pipeline and print the per-stage table."""
    # flywheel[curate]: the CLI also runs where only flywheel[train] is installed
    from curation.config import ConfigError, load_config
    from curation.io.files import InputError  # pyarrow.fs: loaded when the command runs (fast --help)
    from curation.pipeline import OutputError, Pipeline  # flywheel[curate]: Ray Data, msgspec, the stages

    try:
        cfg = load_config(config, inputs=list(input) if input else None, output=output)

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


@commands.command()
def stats(output: str = typer.Argument(..., help="Output folder of a curation run.")) -> None:
    """Print the per-stage table of a finished run (its stats.json)."""
    from contract.stores import filesystem_for  # pyarrow.fs: loaded when the command runs (fast --help)

    fs, root = filesystem_for(output)
    try:
        with fs.open_input_stream(CurationRun(root).stats) as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        fail(f"no stats.json in {output}")
    print_stats_table(RunStats.from_json(data))


@commands.command()
def inspect(
    output: str = typer.Argument(..., help="Output folder of a curation run."),
    doc_id: str = typer.Argument(..., help="Document id."),
    width: int = typer.Option(1200, help="Characters of each text to show."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
) -> None:
    """Why is a document gone: stage, reason, detail, and the kept copy's text side by side."""
    from curation.explain import explain  # pyarrow and pandas: loaded when the command runs (fast --help)

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


@commands.command("train-lm")
def train_lm(
    domain: str = typer.Option(..., help="Domain the model scores (web, code, books, ...)."),
    input: str = typer.Option(..., "--input", help="Reference text: JSONL(.gz/.zst) with a text field."),
    out: Path = typer.Option(..., help="Where to write the ARPA model."),
    order: int = typer.Option(5, help="n-gram order."),
    text_field: str = typer.Option("text", help="Field holding the text."),
    tokenizer: Optional[str] = typer.Option(None, help="prose|code (default: code for the code domain)."),
) -> None:
    """Estimate a modified Kneser-Ney n-gram model (ARPA, loaded by kenlm) for one domain."""
    from curation.lm import train_lm as train  # pyarrow: loaded when the command runs (fast --help)

    try:
        stats = train(domain, input, str(out), order=order, text_field=text_field, kind=tokenizer)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    console.print_json(json.dumps(stats, default=str))


@commands.command("train-classifier")
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
    from curation.classifier import train_classifier as train  # fastText: flywheel[curate]

    try:
        stats = train(input, str(out), label_field=label_field, text_field=text_field,
                      valid_fraction=valid_fraction, seed=seed, epoch=epoch, quantize=quantize)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    console.print_json(json.dumps(stats, default=str))


@commands.command("mixture-plan")
def mixture_plan(
    output: str = typer.Argument(..., help="Output folder of a curation run (reads data/*.parquet)."),
    temperature: float = typer.Option(1.0, help="T: weights ∝ n_d^(1/T); 1 natural, larger flatter."),
    multiplier: Optional[list[str]] = typer.Option(None, help="DOMAIN=FACTOR, e.g. code=2. Repeatable."),
    max_epochs: float = typer.Option(1.5, help="Cap on expected repeats of any document."),
    total_tokens: Optional[int] = typer.Option(None, help="Token budget (default: as many as the caps allow)."),
    unit: str = typer.Option("tokens", help="tokens|documents"),
) -> None:
    """Print the temperature-sampling plan for a finished run without running it."""
    from curation.mixture_plan import mixture_plan_cli  # pyarrow: loaded when the command runs (fast --help)

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


@commands.command("demo-corpus")
def demo_corpus(
    out: Path = typer.Argument(..., help="Folder to write the corpus into."),
    seed: int = typer.Option(0, help="Seed of the injected duplicates, sentences and PII."),
    min_bytes: int = typer.Option(20_000_000, help="Stop adding real text past this many bytes."),
    reference: bool = typer.Option(True, help="Also write reference/<domain>.jsonl for train-lm and the "
                                                "held-out holdout/<domain>.jsonl (disjoint from it and the corpus)."),
) -> None:
    """Build the offline multi-domain demo corpus from text this machine already has."""
    # reads the disk: only when asked
    from curation.demo_corpus import build_demo_corpus, build_heldout_texts, build_reference_texts

    summary = build_demo_corpus(out, seed=seed, min_bytes=min_bytes)
    if reference:
        summary["reference"] = build_reference_texts(out, seed=seed)
        summary["holdout"] = build_heldout_texts(out, seed=seed)
    console.print_json(json.dumps(summary))


@commands.command("curate-posttrain")
def curate_posttrain(
    config: Path = typer.Argument(..., help="Post-training curation config (YAML): inputs, output, steps."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output folder/URI; replaces the config's output."),
    overwrite: bool = typer.Option(False, help="Replace an existing, non-empty output."),
) -> None:
    """Curate chat, preference and prompt JSONL: dedup, decontamination, PII; writes the manifest."""
    # pyarrow, pydantic models of the stages and their libraries: loaded when the command runs (fast --help)
    from curation.config import ConfigError  # as above
    from curation.io.files import InputError  # as above
    from curation.pipeline import OutputError  # as above
    from curation.posttrain.config import load_posttrain_config  # as above
    from curation.posttrain.run import run_posttrain  # as above

    def on_event(event: str, info: dict) -> None:
        if event == "stage_done":
            s = info["stats"]
            err_console.print(f"  {s.name:<24} {s.docs_in:>10,} -> {s.docs_out:>10,} records  {s.seconds:8.1f}s",
                              highlight=False)

    try:
        cfg = load_posttrain_config(config, output=output)
        result = run_posttrain(cfg, overwrite=overwrite, progress=on_event)
    except (ConfigError, InputError, OutputError) as e:
        fail(str(e))
    print_stats_table(result.stats)
    console.print_json(json.dumps(result.manifest.totals.model_dump()))
    console.print(f"rejects:  {result.rejects_dir}\nmanifest: {result.manifest_path}", highlight=False, soft_wrap=True)


@commands.command("demo-instructions")
def demo_instructions(
    out: Path = typer.Argument(..., help="Folder to write the post-training demo set into."),
    seed: int = typer.Option(0, help="Seed of the questions, split and wrong answers (the red-team list is fixed)."),
    max_commands: int = typer.Option(400, help="Man-page questions at most."),
    max_math: int = typer.Option(200, help="sympy questions at most."),
) -> None:
    """Build an offline SFT / preference / prompt / red-team demo set from this machine's docs."""
    from curation.demo_instructions import build_demo_instructions  # reads the disk and sympy: only when asked

    summary = build_demo_instructions(out, seed=seed, max_commands=max_commands, max_math=max_math)
    console.print_json(json.dumps(summary))
