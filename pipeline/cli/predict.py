"""``irscan predict IMAGE... --out DIR``: a 0/255 mask ``DIR/<stem>.png`` per image.

With ``--prob`` also ``DIR/<stem>_prob.tif`` (float32 probabilities). Prints one JSON line
per image.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.cli.options import flip_agreement_option, tta_flips_option


@click.command("predict")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--prob", is_flag=True, help="Also write <stem>_prob.tif float32 probabilities.")
@click.option("--weights", type=click.Path(path_type=Path), help="Safetensors weights. [packaged default]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--threshold", type=float, help="Probability threshold. [the one stored with the weights]")
@tta_flips_option
@click.option("--no-refiner", is_flag=True, help="Leave out the outline refiner the weights carry (the network alone).")
@flip_agreement_option
@click.option("--batch-size", default=4, show_default=True, type=int, help="Images per forward pass.")
def command(images: tuple[Path, ...], out_dir: Path, prob: bool, weights: Path | None, device: str,
            threshold: float | None, tta_flips: bool, no_refiner: bool, flip_agreement: bool,
            batch_size: int) -> None:
    """Write target masks of IMAGE... (any size) into --out."""
    from mim_model.training.predict import predict

    for row in predict(list(images), out_dir, weights=weights, prob=prob, device=device,
                       threshold=threshold, batch_size=batch_size, flip_tta=tta_flips, refine=not no_refiner,
                       flip_agreement=flip_agreement):
        click.echo(json.dumps(row))
