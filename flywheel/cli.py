"""The `flywheel` command: the curation, training, ablation and service commands on one app.

Each package owns its commands (`curation.cli`, `training.commands`, `workflows.commands`,
`api.cli`); this module only mounts them, plus `flywheel demo`, which drives the whole product.
Every command imports its machinery when it runs, so `flywheel train` works where only the
training client (`flywheel[train]`) is installed and `flywheel --help` starts in a fraction of a
second. Errors the user can fix (bad config, missing input) exit 2 with one line; bugs traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from api.cli import commands as service_commands
from curation.cli import commands as curation_commands
from training.commands import commands as training_commands
from workflows.commands import commands as workflow_commands

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Flywheel: curate pretraining data on Ray and train a DeepSeek-style MoE on it.")
for group in (curation_commands, training_commands, workflow_commands, service_commands):
    app.add_typer(group)  # no name: the group's commands sit at the top level


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
    from flywheel.demo import run_demo  # the service client; the server runs as a subprocess

    raise typer.Exit(run_demo(corpus, config, host, port, home, exit_after))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
