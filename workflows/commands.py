"""The ablation command of the `flywheel` CLI: curate each variant, train the same model on each.

    flywheel ablate CONFIG [--output DIR] [--token-budget N] [--parallel N]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from contract.console import console, err_console, fail
from contract.layout import AblationRun

commands = typer.Typer(add_completion=False)


def print_ablation_table(result: dict) -> None:
    """variant | docs kept | tokens | epochs | held-out loss per domain | overall (lowest in bold)."""
    domains = result["domains"]
    largest = result["budgets"][-1]  # the table: mean losses over the seeds at the largest budget
    table = Table(title=f"held-out loss (nats/token) after {largest['steps']} steps x {result['tokens_per_step']:,} "
                        f"tokens (budget {largest['label']}), preset {result['preset']}, "
                        f"mean of seeds {', '.join(map(str, result['seeds']))}")
    epochs_of = {r["variant"]: r["epochs"] for r in result["runs"] if r["budget"] == largest["label"]}
    for col in ["variant", "docs kept", "tokens", "epochs", *domains, "overall"]:
        table.add_column(col, justify="left" if col == "variant" else "right")
    columns = [*domains, "overall"]
    rows = {r["variant"]: [r["loss"].get(d) for d in domains] + [r["overall"]] for r in result["table"]}
    best = [min((vals[i] for vals in rows.values() if vals[i] is not None), default=None) for i in range(len(columns))]
    for v in result["variants"]:
        cells = [f"[bold]{x:.4f}[/]" if x is not None and x == best[i] else ("-" if x is None else f"{x:.4f}")
                 for i, x in enumerate(rows[v["name"]])]
        epochs = "-" if epochs_of.get(v["name"]) is None else f"{epochs_of[v['name']]:.2f}"
        table.add_row(v["name"], f"{v['docs_kept']:,}", f"{v['tokens']:,}", epochs, *cells)
    console.print(table)
    leak = result["leakage"]
    console.print(f"held-out: {leak['held_out_docs']} docs in {len(domains)} domains; removed from the training pool "
                  f"as near-duplicates (Jaccard >= {leak['near_duplicate_jaccard']}): "
                  f"{leak['removed_from_training_pool']}; near-duplicate pairs left in any training set: "
                  f"{leak['pairs_found']}", highlight=False, soft_wrap=True)


@commands.command()
def ablate(
    config: Path = typer.Argument(..., help="Ablation config (YAML): corpus, variants, train, budgets, seeds."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output folder; replaces the config's."),
    token_budget: Optional[int] = typer.Option(None, min=1,
                                               help="Tokens each run trains on (replaces the config's budgets)."),
    parallel: Optional[int] = typer.Option(None, min=1, help="Variants trained at once."),
) -> None:
    """Curate each variant, train the same model on each, compare held-out loss per domain."""
    # flywheel[curate]: the CLI also runs where only flywheel[train] is installed
    from curation.config import ConfigError
    from curation.io.files import InputError  # pyarrow.fs: loaded when the command runs (fast --help)
    from curation.pipeline import OutputError  # flywheel[curate]: Ray Data, msgspec, the stages
    from workflows.ablation.config import load_ablation_config  # Ray, the curation stages and torch: flywheel[all]
    from workflows.ablation.runner import run_ablation  # as above

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
