"""Command-line options and the error exit shared by `genir.cli` and the commands plugins add
(our experiments' `genir_experiments.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

UniversalDirOpt = Annotated[Path, typer.Option("--data", help="universal: the universal tasks' "
                                               "folder (written there first if missing)")]
DEFAULT_UNIVERSAL_DATA = Path("runs/universal/tasks")
QuickOpt = Annotated[bool, typer.Option("--quick", help="fewer training steps and queries")]
QueriesOpt = Annotated[int, typer.Option("--num-queries", min=1, help="evaluation queries")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=10,
                                              help="use only this many gallery items")]
StepsOpt = Annotated[int | None, typer.Option("--steps", min=1, help="decoder training steps")]
TokenizerOpt = Annotated[str, typer.Option("--tokenizer", help="semantic IDs: rq, random, hkmeans, irgen "
                                                   "(needs labels) or avg (needs captions)")]
TowerOpt = Annotated[bool | None, typer.Option(
    "--tune-tower/--frozen-tower", help="fashion-mnist: fine-tune the top of the image tower on "
    "the gallery labels (default) or embed with the frozen ImageNet tower")]
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", help="embedding cache folder")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress",
                                           help="progress bars on long work")]



def fail(message: str) -> NoReturn:
    """Print `error: message` in red on stderr and exit with status 2 (bad input)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)
