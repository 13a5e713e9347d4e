"""``irscan train DATA_DIR --out RUN_DIR``: train MiM-ISTD on SIRST-layout data.

Parses options and calls :func:`mim_model.training.train.train` (and ``export``). Options
left out take :class:`~mim_model.training.train.TrainConfig`'s defaults. Progress is
logged per epoch (INFO) unless ``irscan -q``; ``RUN_DIR/metrics.jsonl`` has one JSON line
per epoch. The command prints a JSON summary.

Several GPUs: ``torchrun --standalone --nproc_per_node N -m pipeline.cli.main -v train ...``
trains data-parallel (:mod:`mim_model.training.distributed`); process 0 reports and exports.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import click

from mim_model.training.loss import LOSSES


def _settings(settings_class: type, options: str, values: dict[str, object]) -> object:
    """``settings_class(**values)`` (the other fields at their defaults); a bad value is the
    user's mistake: one line naming the options."""
    from mim_model.training.train import TrainError

    try:
        return settings_class(**values)
    except ValueError as exc:
        raise TrainError(f"train option {options}: {exc}") from None


def _pop_fields(options: dict[str, object], settings_class: type) -> dict[str, object]:
    """Take out of ``options`` the ones named like a field of the dataclass ``settings_class``
    (the options that set one of its fields: ``--p-synthetic`` sets ``SyntheticSpec.p_synthetic``)."""
    names = {f.name for f in dataclasses.fields(settings_class)}
    return {k: options.pop(k) for k in list(options) if k in names}


def _show_progress(ctx: click.Context) -> None:
    root = ctx.find_root()
    if not root.params.get("quiet"):
        logger = logging.getLogger("mim_model.training")
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)


@click.command("train")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run directory (checkpoints, metrics.jsonl).")
@click.option("--epochs", type=int, help="Total epochs; the cosine schedule spans them. [400]")
@click.option("--crop-px", type=int, help="Training crop side, a multiple of 64. [256]")
@click.option("--batch-size", type=int, help="Crops per step. [32]")
@click.option("--lr", type=float, help="Peak learning rate. [4e-3]")
@click.option("--weight-decay", type=float, help="Weight decay. [1e-4]")
@click.option("--optimizer", type=click.Choice(["adamw", "adagrad"]), help="[adamw]")
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), help="[cosine]")
@click.option("--warmup-epochs", type=float, help="Linear warm-up, epochs. [10]")
@click.option("--loss", type=click.Choice(LOSSES), help="[softiou]")
@click.option("--layout", type=click.Choice(["spatial", "official"]), help="MiM token layout. [spatial]")
@click.option("--input-scale", type=float, help="Images are resized by this before the network (stored with the weights). [2]")
@click.option("--epoch-repeats", type=int, help="Passes over the train split per epoch. [1]")
@click.option("--train-split", help="Split used for training. [train]")
@click.option("--val-split", help="Split that chooses checkpoint and threshold; 'none': a refit (e.g. on "
                                   "--train-split trainval) whose result is the last epoch. [val]")
@click.option("--threshold-without-val", type=float,
              help="With --val-split none: the threshold stored with the weights, fixed beforehand. [0.5]")
@click.option("--split-dir", help="Folder of split files under DATA_DIR. [idx_427]")
@click.option("--device", help="auto, cpu, cuda, cuda:N. [auto]")
@click.option("--num-workers", type=int, help="DataLoader workers. [8]")
@click.option("--eval-every", type=int, help="Evaluate on val every N epochs. [10]")
@click.option("--time-budget-min", type=float, help="Stop with a checkpoint before this many minutes.")
@click.option("--seed", type=int, help="[0]")
@click.option("--synthetic-background", "synthetic_backgrounds", multiple=True, type=click.Path(dir_okay=False),
              help="Satellite IR raster for synthetic crops (repeat the option for several).")
@click.option("--p-synthetic", type=float, help="Share of the training crops that are synthetic. [0]")
@click.option("--p-clutter", type=float,
              help="Share of the synthetic crops drawn on procedural land clutter, not a raster. [0]")
@click.option("--synthetic-paste", "paste_at", type=click.Choice(["network", "native"]),
              help="Paste synthetic targets onto the crop rescaled for the network, or at the background's "
                   "own resolution before rescaling (as a scanned scene's targets). [network]")
@click.option("--synthetic-max-targets", "max_targets", type=int,
              help="Targets pasted into a synthetic crop: 1 to this many, uniform. [4]")
@click.option("--synthetic-busy-share", "busy_share", type=float,
              help="Share of the synthetic targets put on the busiest of 16 random places. [0]")
@click.option("--synthetic-busy-scr", "busy_scr_range", type=(float, float), default=None, metavar="LOW HIGH",
              help="Signal-to-clutter ratio (peak contrast / std of the surroundings) of a target on busy "
                   "ground, uniform in [LOW, HIGH]. [2 4]")
@click.option("--hard-negatives", "hard_negatives", multiple=True, type=click.Path(dir_okay=False),
              help="Hard-negatives file of `irscan find-hard-negatives` (repeat the option for several).")
@click.option("--p-hard-negative", type=float,
              help="Share of the crops that are not synthetic centred on a hard negative. [0]")
@click.option("--scale-range", type=(float, float), default=None, metavar="LOW HIGH",
              help="Rescale augmentation: factor on --input-scale drawn log-uniform in [LOW, HIGH]. [0.6 1.6]")
@click.option("--p-target-crop", type=float, help="Share of the crops placed to hold a target. [0.8]")
@click.option("--mosaic", type=int,
              help="A real crop is N x N crops of --crop-px / N side by side, each from a random image. [1]")
@click.option("--land-val-crops", type=int,
              help="Also log Pd/Fa on this many val-target crops on procedural land at each evaluation. [0]")
@click.option("--ema-decay", type=float,
              help="Evaluate and save a moving average of the weights with this per-step decay (0: off). [0]")
@click.option("--ema-warmup/--no-ema-warmup", default=None,
              help="Lower the average's decay in the first steps to (1 + t) / (10 + t), so that it forgets "
                   "the initial weights (off: it stays near --init-weights at first). [on]")
@click.option("--drop-path-rate", type=float,
              help="Stochastic depth in training: the last block drops its residual branches for this share "
                   "of the images, the first for none, linear between (0: off; the weights do not keep it). [0]")
@click.option("--deep-supervision", type=float,
              help="Add side outputs on the decoder's H/16 and H/8 maps to the loss with this weight "
                   "(training only; the weights do not keep them; 0: off). [0]")
@click.option("--init-weights", type=click.Path(dir_okay=False), help="Safetensors weights to fine-tune from (fresh runs only).")
@click.option("--init-any-scale", is_flag=True, default=None,
              help="Accept --init-weights trained at another --input-scale (to move weights to a finer scale).")
@click.option("--amp/--no-amp", default=None, help="bf16 autocast on CUDA. [on]")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from RUN_DIR/last.pt.")
@click.option("--export", "export_path", type=click.Path(path_type=Path),
              help="After this command's training, write RUN_DIR/best.pt (best val IoU so far) as float16 "
                   "safetensors here, with a model card beside it.")
@click.option("--export-only", is_flag=True, help="Do not train: export RUN_DIR/best.pt to --export now.")
@click.option("--report-split", help="With --export: evaluate the exported weights on this split for the card (chooses nothing).")
@click.pass_context
def command(ctx: click.Context, data_dir: Path, out_dir: Path, resume: bool, export_path: Path | None,
            export_only: bool, report_split: str | None, **options: object) -> None:
    """Train MiM-ISTD on DATA_DIR (images/, masks/, idx_427/*.txt); resume from --out."""
    from mim_model.training.train import TrainConfig, TrainError, export, train

    _show_progress(ctx)
    if export_only and export_path is None:
        raise click.UsageError("--export-only needs --export PATH")
    if export_path is not None:  # before training, which may take hours
        from mim_model.output_paths import check_output_file

        check_output_file(export_path, "--export", TrainError)
    summary: dict[str, object] = {}
    refit = str(options.get("val_split") or "").lower() == "none"
    if not export_only:
        from mim_model.training.data import Augment
        from mim_model.training.synthetic import SyntheticSpec

        overrides = {k: v for k, v in options.items() if v is not None}
        if refit:
            overrides["val_split"] = None
        elif "threshold_without_val" in overrides:
            raise TrainError("train option --threshold-without-val: expected --val-split none (a val split chooses "
                             f"the threshold), got --val-split {options.get('val_split') or 'val'}")
        synthetic = _pop_fields(overrides, SyntheticSpec)
        if synthetic:
            overrides["synthetic"] = _settings(
                SyntheticSpec, "--p-synthetic/--p-clutter/--synthetic-paste/--synthetic-max-targets/--synthetic-busy-*",
                synthetic)
        augment = _pop_fields(overrides, Augment)
        if augment:
            overrides["augment"] = _settings(Augment, "--scale-range/--p-target-crop/--mosaic", augment)
        overrides["synthetic_backgrounds"] = tuple(str(p) for p in overrides.get("synthetic_backgrounds", ()))
        overrides["hard_negatives"] = tuple(str(p) for p in overrides.get("hard_negatives", ()))
        config = TrainConfig(data_dir=str(data_dir), out_dir=str(out_dir), **overrides)
        summary = train(config, resume=resume)
        from mim_model.training.distributed import from_env

        if not from_env().main:  # one of several torchrun processes: process 0 reports and exports
            return
    if export_path is not None:
        if export_only or (out_dir / "best.pt").is_file():
            summary["export"] = export(out_dir / "best.pt", export_path, report_split=report_split,
                                       device=str(options.get("device") or "auto"))
        else:
            summary["export"] = ("nothing yet: a refit exports its last epoch once the schedule is done; resume it"
                                 if refit else "nothing yet: no evaluation on val has run; train longer")
    click.echo(json.dumps(summary, indent=2, default=str))
