"""Options shared by ``irscan scan``, ``plan`` and ``run``, and their conversion to a
:class:`pipeline.config.ScanConfig`.

=====================  ==========================================================
option                 meaning
=====================  ==========================================================
--tile-px              square tile side fed to the model, multiple of 64
--halo-px              context margin per side; core = tile - 2*halo is one chunk
--batch-size           tiles per forward pass
--band                 1-based band to read
--norm                 percentile | fixed | none (see pipeline.normalize)
--norm-low/--norm-high percentiles (percentile) or source values (fixed)
--device               auto | cpu | cuda
--gpus-per-actor       GPUs per inference actor, fractional allowed
--num-actors           inference actors (default: one per GPU share, or 1 on CPU)
--weights              safetensors weights (default: packaged mim_scan.safetensors)
--threshold            probability threshold (default: stored with the weights)
--no-amp               fp32 instead of bf16 autocast on GPU
--tta-flips            average each tile over its three flips too (4x the compute)
--input-scale          resize tiles by this before the network (default: the weights')
--window-px            network context: run each tile as windows of this side (0: whole tile)
--window-halo-px       halo of those windows per side (only with --window-px)
--ray-address          join this Ray cluster (default: RAY_ADDRESS, else a local Ray)
--overwrite            replace existing outputs
=====================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from pipeline.config import RayOptions, ScanConfig
from pipeline.errors import InputError
from pipeline.infer import InferenceSpec
from pipeline.normalize import NormalizationSpec
from pipeline.tiling import DEFAULT_HALO_PX, DEFAULT_TILE_PX, TilingSpec

__all__ = ["scan_options", "config_from_options", "SCAN_OPTION_NAMES", "flip_agreement_option", "tta_flips_option"]

#: ``--tta-flips``, shared by ``scan``/``plan``/``run``, ``evaluate`` and ``predict``.
tta_flips_option = click.option(
    "--tta-flips", is_flag=True,
    help="Average the probabilities over the input and its three flips (4x the compute; fewer false alarms).",
)

#: ``--flip-agreement``, shared by ``evaluate`` and ``predict``.
flip_agreement_option = click.option(
    "--flip-agreement", is_flag=True,
    help="Keep only detections that the image's three flips also find (4x the compute; far fewer false alarms, "
         "may lose weak targets; not with --tta-flips).",
)

_OPTIONS: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.option("--tile-px", type=int, default=DEFAULT_TILE_PX, show_default=True,
                 help="Tile side, multiple of 64 (each tile's core is one output chunk)."),
    click.option("--halo-px", type=int, default=DEFAULT_HALO_PX, show_default=True,
                 help="Halo per side (core = tile - 2*halo)."),
    click.option("--batch-size", type=int, default=8, show_default=True, help="Tiles per forward pass."),
    click.option("--band", type=int, default=1, show_default=True, help="1-based band to read."),
    click.option("--norm", "norm_mode", type=click.Choice(["percentile", "fixed", "none"]), default="percentile",
                 show_default=True, help="Scene normalisation to [0, 1]."),
    click.option("--norm-low", type=float, default=None, help="Low percentile (percentile, default 0.5) or value (fixed)."),
    click.option("--norm-high", type=float, default=None, help="High percentile (percentile, default 99.99) or value (fixed)."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    click.option("--gpus-per-actor", type=float, default=1.0, show_default=True, help="Fractional allowed."),
    click.option("--num-actors", type=int, default=None, help="Inference actors. [one per GPU share, 1 on CPU]"),
    click.option("--weights", type=click.Path(dir_okay=False), default=None, help="Safetensors weights. [packaged mim_scan.safetensors]"),
    click.option("--threshold", type=float, default=None, help="Probability threshold. [from the weights]"),
    click.option("--no-amp", is_flag=True, help="Run the network in fp32 on GPU (default bf16 autocast)."),
    tta_flips_option,
    click.option("--input-scale", type=float, default=None,
                 help="Resize tiles by this factor before the network (compute grows with its square). "
                      "[the weights' training scale]"),
    click.option("--window-px", type=int, default=None,
                 help="Run each tile as overlapping windows of this side (tile pixels): the network then "
                      "judges a spot by that much surroundings; 0 runs whole tiles. [0]"),
    click.option("--window-halo-px", type=int, default=None,
                 help="Halo of each window per side, at most --halo-px; only with --window-px. [16]"),
    click.option("--ray-address", default=None, help="Ray cluster to join. [RAY_ADDRESS, else local]"),
    click.option("--max-tiles-in-flight", type=int, default=None, help="Bound on tiles held in memory."),
    click.option("--overwrite", is_flag=True, help="Replace existing outputs."),
    click.option("--progress/--no-progress", default=None, help="Progress bar. [when stderr is a terminal]"),
]

SCAN_OPTION_NAMES = (
    "tile_px", "halo_px", "batch_size", "band", "norm_mode", "norm_low", "norm_high", "device",
    "gpus_per_actor", "num_actors", "weights", "threshold", "no_amp", "tta_flips", "input_scale", "window_px",
    "window_halo_px", "ray_address",
    "max_tiles_in_flight", "overwrite", "progress",
)


def scan_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def _window_fields(window_px: int | None, window_halo_px: int | None) -> dict[str, Any]:
    """InferenceSpec fields of the window options: absent ones keep the spec's defaults,
    ``window_px`` 0 means whole tiles (None in the spec). ``window_halo_px`` is the halo of
    those windows: without them it would be ignored, so it is refused."""
    if window_halo_px is not None and not window_px:
        without = "without window_px" if window_px is None else "with window_px 0 (whole tiles)"
        raise InputError(
            f"window_halo_px: expected only with window_px (it is the halo of the windows inside each tile),"
            f" got {window_halo_px} {without}"
        )
    fields: dict[str, Any] = {}
    if window_px is not None:
        fields["window_px"] = window_px or None
    if window_halo_px is not None:
        fields["window_halo_px"] = window_halo_px
    return fields


def config_from_options(values: dict[str, Any]) -> ScanConfig:
    """Build a validated ScanConfig from option values (names as in SCAN_OPTION_NAMES)."""
    mode = values.get("norm_mode", "percentile")
    low, high = values.get("norm_low"), values.get("norm_high")
    if mode == "percentile":
        norm = NormalizationSpec(mode=mode, **({"low_pct": low} if low is not None else {}),
                                 **({"high_pct": high} if high is not None else {}))
    elif mode == "fixed":
        norm = NormalizationSpec(mode=mode, min_value=low, max_value=high)
    else:
        if low is not None or high is not None:  # else ignored: the scene would map as if they were not given
            name, value = ("norm_low", low) if low is not None else ("norm_high", high)
            raise InputError(
                f"{name}: expected only with norm percentile or fixed (norm {mode} takes the values as they are),"
                f" got {value} with norm {mode}"
            )
        norm = NormalizationSpec(mode=mode)
    return ScanConfig(
        tiling=TilingSpec(values.get("tile_px", DEFAULT_TILE_PX), values.get("halo_px", DEFAULT_HALO_PX)),
        normalization=norm,
        inference=InferenceSpec(
            weights_path=values.get("weights"),
            device=values.get("device", "auto"),
            amp=not values.get("no_amp", False),
            threshold=values.get("threshold"),
            flip_tta=values.get("tta_flips", False),
            input_scale=values.get("input_scale"),
            **_window_fields(values.get("window_px"), values.get("window_halo_px")),
        ),
        ray=RayOptions(
            address=values.get("ray_address"),
            gpus_per_actor=values.get("gpus_per_actor", 1.0),
            num_actors=values.get("num_actors"),
            max_tiles_in_flight=values.get("max_tiles_in_flight"),
        ),
        band=values.get("band", 1),
        batch_size=values.get("batch_size", 8),
        overwrite=values.get("overwrite", False),
        progress=values.get("progress"),
    )
