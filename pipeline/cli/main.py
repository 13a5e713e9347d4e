"""``irscan`` click group: logging set-up and one-line errors for user mistakes."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from mim_model.errors import MiMError
from pipeline.errors import IrscanError

# subcommand name -> module under pipeline.cli that defines a click command named `command`
SUBCOMMANDS = {
    "train": "pipeline.cli.train",
    "train-refiner": "pipeline.cli.train_refiner",
    "evaluate": "pipeline.cli.evaluate",
    "find-hard-negatives": "pipeline.cli.find_hard_negatives",
    "predict": "pipeline.cli.predict",
    "scan": "pipeline.cli.scan",
    "plan": "pipeline.cli.plan",
    "run": "pipeline.cli.run",
}


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs (fast start-up)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module_name = SUBCOMMANDS.get(name)
        if module_name is None:
            return None
        return importlib.import_module(module_name).command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (IrscanError, MiMError) as exc:
            click.echo(f"irscan: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_LazyGroup)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors (the default without -v).")
def cli(verbose: int, quiet: bool) -> None:
    """irscan: find small infrared targets in large georeferenced scenes."""
    level = logging.WARNING if quiet or verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


if __name__ == "__main__":  # python -m pipeline.cli.main (torchrun -m for data-parallel training)
    cli()
