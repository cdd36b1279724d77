"""The command-line conventions every package's commands share: one console for results, one for
errors, and `fail`, which prints one line a user can act on and exits 2 (bugs still traceback).
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
