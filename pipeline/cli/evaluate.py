"""``irscan evaluate DATA_DIR --split test``: IoU, nIoU, Pd and Fa of weights on a split, as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.cli.options import flip_agreement_option, tta_flips_option


@click.command("evaluate")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, help="Split name under --split-dir, or a .txt path.")
@click.option("--split-dir", default="idx_427", show_default=True, help="Folder of split files under DATA_DIR.")
@click.option("--weights", type=click.Path(path_type=Path), help="Safetensors weights. [packaged default]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--threshold", type=float, help="Probability threshold. [the one stored with the weights]")
@tta_flips_option
@click.option("--no-refiner", is_flag=True, help="Leave out the outline refiner the weights carry (the network alone).")
@flip_agreement_option
@click.option("--batch-size", default=8, show_default=True, type=int, help="Images per forward pass.")
def command(data_dir: Path, split: str, split_dir: str, weights: Path | None, device: str,
            threshold: float | None, tta_flips: bool, no_refiner: bool, flip_agreement: bool,
            batch_size: int) -> None:
    """Score weights on DATA_DIR's split at native resolution; print the metrics as JSON."""
    from mim_model.training.evaluate import evaluate

    result = evaluate(data_dir, split, weights=weights, device=device, threshold=threshold,
                      split_dir=split_dir, batch_size=batch_size, flip_tta=tta_flips, refine=not no_refiner,
                      flip_agreement=flip_agreement)
    click.echo(json.dumps(result, indent=2))
