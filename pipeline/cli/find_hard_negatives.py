"""``irscan find-hard-negatives DATA_DIR --split train --out FILE``: where a network fires on no target.

Parses options and calls :func:`mim_model.training.hard_negatives.find_hard_negatives`; the
file it writes is read by ``irscan train --hard-negatives FILE --p-hard-negative P``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("find-hard-negatives")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--split", default="train", show_default=True, help="Split name under --split-dir, or a .txt path.")
@click.option("--split-dir", default="idx_427", show_default=True, help="Folder of split files under DATA_DIR.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The hard-negatives JSON file to write.")
@click.option("--weights", type=click.Path(path_type=Path), help="Safetensors weights. [packaged default]")
@click.option("--threshold", type=float,
              help="Probability threshold of an object; lower also records what the network is unsure of. "
                   "[the one stored with the weights]")
@click.option("--clear-px", default=2, show_default=True, type=int,
              help="Leave out objects this close to a target (outline errors, not confusions); 0 keeps all.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--no-refiner", is_flag=True, help="Leave out the outline refiner the weights carry (the network alone).")
@click.option("--batch-size", default=8, show_default=True, type=int, help="Images per forward pass.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def command(data_dir: Path, split: str, split_dir: str, out_path: Path, weights: Path | None,
            threshold: float | None, clear_px: int, device: str, no_refiner: bool, batch_size: int, overwrite: bool) -> None:
    """Record the objects a network finds on DATA_DIR's split that match no target; print a summary as JSON."""
    from mim_model.output_paths import check_output_file
    from mim_model.training.hard_negatives import HardNegativesError, find_hard_negatives, write_hard_negatives

    check_output_file(out_path, "--out", HardNegativesError)
    if out_path.exists() and not overwrite:
        raise HardNegativesError(f"--out {out_path}: expected a path with no file (or --overwrite), got an existing file")
    content = find_hard_negatives(data_dir, split, weights=weights, threshold=threshold, device=device,
                                  split_dir=split_dir, batch_size=batch_size, refine=not no_refiner,
                                  clear_px=clear_px)
    write_hard_negatives(out_path, content)
    summary = {k: v for k, v in content.items() if k != "points"}
    click.echo(json.dumps({**summary, "out": str(out_path)}, indent=2))
