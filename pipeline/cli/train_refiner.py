"""``irscan train-refiner DATA_DIR --out NEW.safetensors``: fit an outline refiner to weights.

Parses options and calls :func:`mim_model.training.refine.train_refiner`: the network of
``--weights`` (the packaged SIRST weights by default) runs on DATA_DIR's ``--split``, a
refiner (:mod:`mim_model.refiner`) is fitted to its probabilities there, and both are
written to ``--out``, which ``evaluate``, ``predict`` and ``scan`` then use with the refiner.
Prints a JSON summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("train-refiner")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="New weights file: the network of --weights and the fitted refiner.")
@click.option("--weights", type=click.Path(path_type=Path), help="Safetensors weights of the network. [packaged default]")
@click.option("--split", default="train", show_default=True,
              help="Split the refiner fits on: the one the network trained on (trainval for the packaged weights).")
@click.option("--split-dir", default="idx_427", show_default=True, help="Folder of split files under DATA_DIR.")
@click.option("--steps", type=int, help="Optimiser steps. [6000]")
@click.option("--seed", type=int, help="[0]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.pass_context
def command(ctx: click.Context, data_dir: Path, out: Path, weights: Path | None, split: str, split_dir: str,
            steps: int | None, seed: int | None, device: str, overwrite: bool) -> None:
    """Fit an outline refiner to a network's probabilities on DATA_DIR's split; write both to --out."""
    from mim_model.training.refine import RefinerTrainConfig, train_refiner
    from pipeline.cli.train import _show_progress

    _show_progress(ctx)
    recipe = {k: v for k, v in {"steps": steps, "seed": seed}.items() if v is not None}
    summary = train_refiner(data_dir, split, out, weights=weights, cfg=RefinerTrainConfig(**recipe),
                            split_dir=split_dir, device=device, overwrite=overwrite)
    click.echo(json.dumps(summary, indent=2))
