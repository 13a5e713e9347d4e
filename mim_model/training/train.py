"""Train MiM-ISTD on SIRST-layout data, with checkpoints, resume and a time budget.

Recipe (ours; the paper's is not public, spec section 4)
--------------------------------------------------------
* Input: grey replicated to 3 channels, ImageNet normalisation
  (:func:`mim_model.training.preprocess.to_model_input`).
* Scale: the network sees every image resized by ``input_scale`` (default **2**), in
  training and in every later use (it is stored with the weights); probabilities are
  resized back, and all metrics are computed at native resolution. MiM's head works at
  1/4 resolution, too coarse for 3-7 px targets at native size. Measured on an H100: a
  model trained at scale 1 (below) scored val IoU / nIoU / Pd 0.676 / 0.646 / 0.928 when
  run at scale 1 and 0.699 / 0.727 / 0.959 at scale 2 (0.701 / 0.708 / 0.969 at 1.75).
* Samples: square crops of ``crop_px`` (default 256) after a rescale by ``input_scale``
  times a log-uniform factor in 0.6..1.6, brightness/contrast jitter, light blur, D4
  flips; 80 % of crops hold a target (:mod:`mim_model.training.data`). Optionally a share of
  them is centred on hard negatives, places where a network fired on no target
  (``hard_negatives``, ``p_hard_negative``; :mod:`mim_model.training.hard_negatives`).
* Loss: SoftIoU (ACM's, batch-level). SoftIoU + 0.5 BCE (``"softiou+bce"``) started
  learning much later in H100 trials (val IoU after 50 epochs at batch 32: 0.14 against
  0.44-0.46 at lr 2e-3; 0.36 against 0.51 at lr 4e-3).
* Optimiser: AdamW (lr 4e-3, batch 32, weight decay 1e-4 on weight matrices and
  convolutions only, none on norms, biases, ``A_logs`` and ``Ds``), linear warm-up of 10
  epochs then cosine decay to 1 % of lr, stepped per batch. ACM's Adagrad (lr 0.05,
  constant) is available as ``optimizer="adagrad", schedule="constant"``; AdamW with a
  cosine schedule converges in far fewer epochs, which matters for a budget of minutes.
  A step is launch-bound on an H100 (crop 256: 84 ms at batch 16, 111 ms at 32, 190 ms at
  64), so batch 32 is nearly free. One H100 trial at scale 1 (350-epoch schedule, stopped
  at epoch 282 after 8.3 min) reached val IoU 0.677, nIoU 0.649, Pd 0.928, Fa 2.3e-5.
* Deep supervision (``deep_supervision`` > 0, off by default): side outputs on the
  decoder's two coarser maps add ``deep_supervision`` times their mean loss
  (:mod:`mim_model.training.deep_supervision`); only the network is averaged and exported.
  A 40-epoch screening at 0.5 did not help on val with the refiner (docs/benchmarks.md).
* Mixed precision: bf16 autocast on CUDA (no loss scaling needed); the selective scan
  casts to float32 inside, the loss is computed in float32.
* Weight averaging (``ema_decay`` > 0): an exponential moving average of the weights
  (and a copy of the norm statistics) is kept beside the trained model, updated after
  every step; it is what is evaluated, chosen and saved in ``best.pt``. The raw weights
  wander with each batch of a small data set (val IoU moved by +-0.02 between evaluations
  four epochs apart in run 3); their average does not. With ``ema_warmup`` (default) the
  decay of step t is ``min(ema_decay, (1 + t) / (10 + t))``, so that a run from scratch
  does not carry its random initial weights for thousands of steps (without it, run 6's
  average at decay 0.999 still held 0.999**1600 = 20 % of them at epoch 100, and scored
  val IoU 0).
* Model selection: every ``eval_every`` epochs the model is run on the **val** split at
  native resolution (zero-padded to a square multiple of 64, cropped back); thresholds
  ``eval_thresholds`` on the probability are swept and the best val IoU picks both the
  checkpoint (``best.pt``) and the threshold. The test split is never read here.
* Refit (``val_split=None``): once a recipe has been chosen on val, the same recipe can be
  trained again on train + val (``train_split="trainval"``) with nothing left to choose:
  no evaluation runs, ``best.pt`` is the last epoch of the fixed schedule (written only
  when the schedule is done) and the threshold is ``threshold_without_val``, fixed
  beforehand. The test split is never read here either.

Files in ``out_dir``
--------------------
``last.pt``
    Everything needed to resume (model, its weight average, optimiser, scheduler, epoch,
    RNG states, best so far, config), written atomically at the end of each epoch.
``best.pt``
    Model state of the best val IoU, its epoch, threshold and val metrics (without a val
    split: the last epoch's, with ``val`` None).
``metrics.jsonl``
    One JSON object per epoch: epoch, step, loss, lr, seconds, and ``val`` (or null).

Resume: :func:`train` continues from ``last.pt`` when it exists (unless
``resume=False``). With ``time_budget_min`` set, it stops before an epoch it expects not
to finish in time (and, as a last resort, abandons an epoch that overruns), so a run can
be split over commands of limited length: run the same command again to go on.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mim_model.errors import MiMError, WeightsError
from mim_model.output_paths import make_output_dir
from mim_model.training import distributed
from mim_model.training.deep_supervision import DeeplySupervisedMiM, deeply_supervised_loss
from mim_model.training.data import Augment, EpochSampler, SirstSplit, TrainCrops, read_split, split_summary
from mim_model.training.hard_negatives import HardNegativePool, read_hard_negatives
from mim_model.training.inference import autocast_for, predict_probs
from mim_model.training.loss import LOSSES, make_loss
from mim_model.training.metrics import ThresholdSweep
from mim_model.training.preprocess import NORMALISATION, to_model_input
from mim_model.training.synthetic import SyntheticSource, SyntheticSpec, land_validation_crops

__all__ = [
    "TrainConfig",
    "TrainError",
    "train",
    "export",
    "resolve_device",
    "evaluate_split",
    "CHECKPOINT_FORMAT",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "irscan-train-v1"
LAST = "last.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
DEFAULT_THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)

# Config fields that may change between a run and its resumption without a warning.
_RESUME_FREE_FIELDS = frozenset(
    {"data_dir", "out_dir", "epochs", "time_budget_min", "num_workers", "eval_every", "device", "eval_batch_size"}
)


class TrainError(MiMError, ValueError):
    """A training run cannot start or resume (message names the file or field)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """Settings of one training run (see the module docstring for the recipe).

    Attributes
    ----------
    data_dir : str
        SIRST-layout data directory.
    out_dir : str
        Run directory: checkpoints and ``metrics.jsonl``.
    train_split : str
        Split name under ``data_dir/split_dir`` (or a path to a ``.txt`` file).
    val_split : str or None
        Split that chooses the checkpoint and threshold; None: a refit with nothing to
        choose (see the module docstring), ``best.pt`` being the last epoch.
    threshold_without_val : float
        Without a val split, the probability threshold stored with the weights (fixed
        beforehand, e.g. the one the recipe's run on train chose on val).
    split_dir : str
        Folder of split files.
    layout : str
        MiM token layout, ``"spatial"`` (default) or ``"official"``.
    input_scale : float
        The network sees images resized by this factor, in training and in every later
        use (stored in the weights' metadata); probabilities are resized back.
    crop_px : int
        Training crop side, a multiple of 64.
    batch_size : int
        Crops per step.
    epochs : int
        Total epochs (the cosine schedule spans them).
    epoch_repeats : int
        Passes over the train split per epoch.
    optimizer : str
        ``"adamw"`` or ``"adagrad"``.
    lr, weight_decay : float
        Peak learning rate and weight decay.
    schedule : str
        ``"cosine"`` (warm-up then cosine) or ``"constant"``.
    warmup_epochs : float
        Linear warm-up length, epochs.
    min_lr_ratio : float
        Final lr of the cosine as a fraction of ``lr``.
    loss : str
        One of :data:`mim_model.training.loss.LOSSES` (``"softiou"``, ``"softiou+bce"``,
        ``"softiou-image"``, ``"sls"``, ``"tversky"``, ``"tversky-fa"``).
    bce_weight : float
        Weight of BCE in ``"softiou+bce"``.
    grad_clip_norm : float
        Clip the gradient norm to this; 0 disables.
    seed : int
        Seeds the model init and every crop.
    amp : bool
        bf16 autocast on CUDA.
    device : str
        ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    num_workers : int
        DataLoader worker processes (0: load in the main process).
    eval_every : int
        Evaluate on val every this many epochs (and after the last).
    eval_thresholds : tuple of float
        Probability thresholds swept on val.
    eval_batch_size : int
        Images per forward pass in evaluation.
    time_budget_min : float or None
        Stop (with a checkpoint) before this many minutes have passed; None: no limit.
    augment : Augment
        Augmentation settings.
    init_weights : str or None
        Safetensors weights to start from (fine-tuning) when the run starts afresh; their
        layout and input scale must match this config. Ignored when resuming.
    init_any_scale : bool
        Accept ``init_weights`` trained at another input scale (the parameters do not
        depend on it; the network then learns the new scale): for moving weights to a
        finer input scale without training from scratch.
    synthetic_backgrounds : tuple of str
        Satellite IR rasters for synthetic crops (targets of ``train_split`` pasted onto them).
    synthetic : SyntheticSpec
        Share and make-up of the synthetic crops (``p_synthetic`` 0: none).
    hard_negatives : tuple of str
        Hard-negatives files (:mod:`mim_model.training.hard_negatives`, written by
        ``irscan find-hard-negatives``): places in the training split's images where a
        network fired on no target.
    p_hard_negative : float
        Share of the crops that are not synthetic centred on one of ``hard_negatives``
        (0: none; above 0 needs the files).
    land_val_crops : int
        Also score, at each evaluation, this many fixed crops of the val split's targets on
        procedural land clutter (:func:`land_validation_crops`) at the chosen threshold:
        logged as ``land_val`` (Pd, Fa), never used to choose (0: off).
    ema_decay : float
        Per-step decay of the weight average that is evaluated and saved (0: off, the raw
        weights are used; 0.998 averages over about 500 steps).
    ema_warmup : bool
        Use the decay ``min(ema_decay, (1 + t) / (10 + t))`` at step t (counted from the
        run's start, resumes included), so that the average forgets the initial weights
        quickly; off: ``ema_decay`` from the first step.
    drop_path_rate : float
        Stochastic depth in training: the last block's share of images whose residual
        branches are dropped, rising linearly from 0 at the first block
        (:class:`mim_model.config.MiMConfig`); 0: off. The exported weights do not depend on it.
    deep_supervision : float
        Weight of the mean loss of side outputs on the decoder's two coarser maps
        (:mod:`mim_model.training.deep_supervision`) added to the loss; 0: off. The side
        heads exist only in training: the exported weights are the plain network.
    """

    data_dir: str
    out_dir: str
    train_split: str = "train"
    val_split: str | None = "val"
    threshold_without_val: float = 0.5
    split_dir: str = "idx_427"
    layout: str = "spatial"
    input_scale: float = 2.0
    crop_px: int = 256
    batch_size: int = 32
    epochs: int = 400
    epoch_repeats: int = 1
    optimizer: str = "adamw"
    lr: float = 4e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 10.0
    min_lr_ratio: float = 0.01
    loss: str = "softiou"
    bce_weight: float = 0.5
    grad_clip_norm: float = 0.0
    seed: int = 0
    amp: bool = True
    device: str = "auto"
    num_workers: int = 8
    eval_every: int = 10
    eval_thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    eval_batch_size: int = 8
    time_budget_min: float | None = None
    augment: Augment = field(default_factory=Augment)
    init_weights: str | None = None
    init_any_scale: bool = False
    synthetic_backgrounds: tuple[str, ...] = ()
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    hard_negatives: tuple[str, ...] = ()
    p_hard_negative: float = 0.0
    land_val_crops: int = 0
    ema_decay: float = 0.0
    ema_warmup: bool = True
    drop_path_rate: float = 0.0
    deep_supervision: float = 0.0

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> TrainError:
            return TrainError(f"train config {name}: expected {expected}, got {getattr(self, name)!r}")

        if self.layout not in ("spatial", "official"):
            raise bad("layout", "'spatial' or 'official'")
        if self.crop_px <= 0 or self.crop_px % 64:
            raise bad("crop_px", "a positive multiple of 64")
        if self.crop_px % self.augment.mosaic:
            raise bad("crop_px", f"a multiple of the augmentation's mosaic {self.augment.mosaic}")
        for name in ("batch_size", "epochs", "epoch_repeats", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        if self.num_workers < 0:
            raise bad("num_workers", "an integer >= 0")
        if self.optimizer not in ("adamw", "adagrad"):
            raise bad("optimizer", "'adamw' or 'adagrad'")
        if self.schedule not in ("cosine", "constant"):
            raise bad("schedule", "'cosine' or 'constant'")
        if self.loss not in LOSSES:
            raise bad("loss", f"one of {LOSSES}")
        if not 0.25 <= self.input_scale <= 4:
            raise bad("input_scale", "a factor in [0.25, 4]")
        if not self.lr > 0:
            raise bad("lr", "a positive number")
        if not self.eval_thresholds or not all(0 < t < 1 for t in self.eval_thresholds):
            raise bad("eval_thresholds", "probabilities in (0, 1)")
        if self.time_budget_min is not None and not self.time_budget_min > 0:
            raise bad("time_budget_min", "a positive number of minutes or None")
        if self.land_val_crops < 0:
            raise bad("land_val_crops", "an integer >= 0")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise bad("drop_path_rate", "a rate in [0, 1)")
        if not 0.0 <= self.deep_supervision <= 10.0:
            raise bad("deep_supervision", "a loss weight in [0, 10]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay", "a decay in [0, 1)")
        if not 0 < self.threshold_without_val < 1:
            raise bad("threshold_without_val", "a probability in (0, 1)")
        if self.val_split is None and self.land_val_crops:
            raise bad("land_val_crops", "0 without a val split (its crops are made of val targets)")
        if not 0.0 <= self.p_hard_negative <= 1.0:
            raise bad("p_hard_negative", "a probability in [0, 1]")
        if self.p_hard_negative > 0 and not self.hard_negatives:
            raise bad("hard_negatives", "at least one file when p_hard_negative > 0")
        if self.hard_negatives and self.p_hard_negative == 0:
            raise bad("p_hard_negative", "a share above 0 when hard_negatives files are given")
        if self.synthetic.needs_rasters and not self.synthetic_backgrounds:
            raise bad("synthetic_backgrounds", "at least one raster when synthetic.p_synthetic > 0 and p_clutter < 1")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able form (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise TrainError(f"train config: unknown fields {unknown}")
        kwargs = _tuples_restored(cls, raw)
        if isinstance(kwargs.get("augment"), dict):
            kwargs["augment"] = Augment(**_tuples_restored(Augment, kwargs["augment"]))
        if isinstance(kwargs.get("synthetic"), dict):
            kwargs["synthetic"] = SyntheticSpec(**_tuples_restored(SyntheticSpec, kwargs["synthetic"]))
        return cls(**kwargs)


def _tuples_restored(settings_class: type, raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the values of ``settings_class``'s tuple fields (those with a tuple default)
    made tuples again: JSON and checkpoints give them back as lists."""
    tuple_fields = {f.name for f in dataclasses.fields(settings_class) if isinstance(f.default, tuple)}
    return {k: tuple(v) if k in tuple_fields else v for k, v in raw.items()}


# --------------------------------------------------------------------------- helpers


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` as given.

    Raises
    ------
    TrainError
        Another device name, CUDA asked for where it is not available, or an index past the
        CUDA devices there are.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise TrainError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device: expected an available device, got {device!r} but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise TrainError(f"device: expected one of the {torch.cuda.device_count()} CUDA devices "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}), got {device!r}")
    return dev


def _atomic_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean the same here
        raise TrainError(f"checkpoint {path}: expected a file written by irscan train, got {type(err).__name__}: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise TrainError(f"checkpoint {path}: expected format {CHECKPOINT_FORMAT!r}, got {got!r}")
    return ckpt


def _load_init_weights(model: nn.Module, cfg: TrainConfig) -> None:
    """Start from ``cfg.init_weights`` (safetensors) after checking layout and input scale."""
    from mim_model.weights import load_model

    path = Path(str(cfg.init_weights))
    try:
        start = load_model(path)
    except WeightsError as exc:
        raise TrainError(f"train config init_weights: {exc}") from None
    meta = start.weights_metadata  # type: ignore[attr-defined]
    for key, want in (("layout", cfg.layout), ("input_scale", cfg.input_scale)):
        got = meta.get(key)
        if got is None:
            continue
        same = float(got) == float(want) if key == "input_scale" else got == want
        if not same and key == "input_scale" and cfg.init_any_scale:
            log.warning("%s was trained at input scale %s: fine-tuning it at %s", path, got, want)
        elif not same:
            raise TrainError(f"train config init_weights: {path} has {key} {got!r}, expected {want!r} as configured")
    model.load_state_dict(start.state_dict())
    log.info("starting from %s", path)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only (not norms, biases, A_logs, Ds)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim <= 1 or leaf in ("A_logs", "Ds") or name.endswith("relative_pos"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    return torch.optim.Adagrad(groups, lr=cfg.lr)


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch))) if cfg.schedule == "cosine" else 0

    def factor(step: int) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _git_commit() -> str:
    """The code's commit for the weights' metadata: ``IRSCAN_GIT_COMMIT`` when set (a copy of a
    checkout whose ``.git`` is stale, as on the lent GPU machines), else ``git rev-parse HEAD``
    (with ``-dirty`` for uncommitted changes to tracked files)."""
    if os.environ.get("IRSCAN_GIT_COMMIT"):
        return os.environ["IRSCAN_GIT_COMMIT"]
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_model(layout: str, drop_path_rate: float = 0.0) -> nn.Module:
    """A freshly initialised MiM with the given token layout (and stochastic depth, which
    acts in training only)."""
    from mim_model.network import MiM

    return MiM(layout=layout, drop_path_rate=drop_path_rate)


def evaluate_split(
    model: nn.Module,
    split: SirstSplit,
    *,
    device: torch.device,
    thresholds: tuple[float, ...],
    amp: bool = True,
    batch_size: int = 8,
    scale: float = 1.0,
) -> ThresholdSweep:
    """Run ``model`` on every image of ``split`` (resized by ``scale``, probabilities resized
    back to native size) and sweep the thresholds at native size."""
    images01 = split.images01()
    return _sweep(model, images01, split.masks, device=device, thresholds=thresholds, amp=amp,
                  batch_size=batch_size, scale=scale)


def _sweep(
    model: nn.Module,
    images01: list[np.ndarray],
    masks: list[np.ndarray],
    *,
    device: torch.device,
    thresholds: tuple[float, ...],
    amp: bool,
    batch_size: int,
    scale: float,
) -> ThresholdSweep:
    """Probabilities of grey [0, 1] images scored against their masks at each threshold."""
    probs = predict_probs(model, images01, device=device, amp=amp, batch_size=batch_size, scale=scale)
    sweep = ThresholdSweep(thresholds)
    for prob, mask in zip(probs, masks, strict=True):
        sweep.update(prob, mask)
    return sweep


def _score_land_val(
    model: nn.Module,
    crops: list[tuple[np.ndarray, np.ndarray]],
    cfg: TrainConfig,
    device: torch.device,
    threshold: float,
) -> dict[str, Any]:
    """Pd and Fa (and IoU) of ``model`` on the land validation crops at ``threshold``."""
    sweep = _sweep(model, [image for image, _ in crops], [mask for _, mask in crops], device=device,
                   thresholds=(threshold,), amp=cfg.amp, batch_size=cfg.eval_batch_size, scale=cfg.input_scale)
    return _compact(sweep.results()[float(threshold)])


class WeightAverage:
    """Exponential moving average of a model's parameters; buffers (norm statistics) are
    copied from the model at each update. ``model`` is the averaged copy, in eval mode.
    With ``warmup`` the decay of step t is ``min(decay, (1 + t) / (10 + t))``."""

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = False) -> None:
        self.decay = decay
        self.warmup = warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used for the update after step ``step`` (0-based)."""
        return min(self.decay, (1.0 + step) / (10.0 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average ``1 - decay_at(step)`` of the way towards ``model``'s weights."""
        averaged = list(self.model.parameters())
        torch._foreach_lerp_(averaged, [p.detach() for p in model.parameters()], 1.0 - self.decay_at(step))
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)


def _compact(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("iou", "niou", "pd", "fa", "n_targets", "n_matched")
    return {k: metrics[k] for k in keys}


# --------------------------------------------------------------------------- training


def train(config: TrainConfig, *, resume: bool = True, max_epochs_this_run: int | None = None) -> dict[str, Any]:
    """Train (or continue training) a MiM model; see the module docstring.

    Parameters
    ----------
    config : TrainConfig
    resume : bool
        Continue from ``out_dir/last.pt`` when it exists; False starts afresh and
        overwrites the run directory's checkpoints and metrics log.
    max_epochs_this_run : int, optional
        Stop (resumably) after this many epochs in this call, whatever the budget.

    Returns
    -------
    dict
        ``epochs_done``, ``epochs``, ``finished`` (all epochs done), ``stopped_by_budget``,
        ``best`` (epoch, threshold, val metrics or None), ``last_checkpoint``,
        ``best_checkpoint``, ``seconds``.

    Raises
    ------
    DatasetError
        Bad data directory, split file, image or mask.
    TrainError
        Bad config, unusable device, or a checkpoint that cannot be resumed.
    """
    t_start = time.monotonic()
    cfg = config
    budget_s = cfg.time_budget_min * 60.0 if cfg.time_budget_min is not None else math.inf
    device = resolve_device(cfg.device)
    workers = distributed.from_env()
    if workers.parallel:
        if cfg.batch_size % workers.world:
            raise TrainError(
                f"train config batch_size: expected a multiple of the {workers.world} training processes, "
                f"got {cfg.batch_size}"
            )
        if device.type == "cuda":
            device = torch.device("cuda", workers.local_rank)
        distributed.start(workers, device)
        if not workers.main:
            log.setLevel(logging.WARNING)
    out_dir = make_output_dir(cfg.out_dir, "train out_dir", TrainError)
    last_path, best_path, metrics_path = out_dir / LAST, out_dir / BEST, out_dir / METRICS

    shared = sorted(set(read_split(cfg.data_dir, cfg.train_split, cfg.split_dir))
                    & set(read_split(cfg.data_dir, cfg.val_split, cfg.split_dir))) if cfg.val_split else []
    if shared:
        raise TrainError(
            f"train config val_split: expected a split with no training image (it chooses the checkpoint "
            f"and threshold), got {cfg.val_split!r}, which shares {len(shared)} images with "
            f"{cfg.train_split!r} (e.g. {shared[0]})"
        )
    hard_negative_points = read_hard_negatives(cfg.hard_negatives) if cfg.p_hard_negative > 0 else {}
    train_split = SirstSplit.load(cfg.data_dir, cfg.train_split, cfg.split_dir)
    synthetic = None
    if cfg.synthetic.p_synthetic > 0:
        synthetic = SyntheticSource.build(list(cfg.synthetic_backgrounds), train_split, cfg.synthetic)
    hard_negatives = None
    if cfg.p_hard_negative > 0:
        hard_negatives = HardNegativePool(hard_negative_points, train_split.ids,
                                          [image.shape for image in train_split.images])
        log.info("hard negatives: %d points in %d of %d %s images; %.0f%% of the crops that are not synthetic "
                 "hold one", hard_negatives.n_points, hard_negatives.n_images, len(train_split), cfg.train_split,
                 100 * cfg.p_hard_negative)
    val_split = SirstSplit.load(cfg.data_dir, cfg.val_split, cfg.split_dir) if cfg.val_split else None
    if val_split is None:
        log.info("no val split: a refit; best.pt will be the last of %d epochs, threshold %.2f",
                 cfg.epochs, cfg.threshold_without_val)
    land_val = land_validation_crops(val_split, cfg.land_val_crops) if cfg.land_val_crops else []
    if cfg.batch_size > len(train_split) * cfg.epoch_repeats:
        raise TrainError(
            f"train config batch_size: expected at most the {len(train_split) * cfg.epoch_repeats} crops "
            f"of an epoch, got {cfg.batch_size}"
        )

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.layout, cfg.drop_path_rate).to(device)
    if workers.parallel and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters and state-dict keys
    # deep supervision: the optimised module is the network with its training-only side heads
    supervised = DeeplySupervisedMiM(model).to(device) if cfg.deep_supervision > 0 else None
    optimised: nn.Module = supervised if supervised is not None else model
    optimizer = _make_optimizer(optimised, cfg)
    sampler = EpochSampler(len(train_split), seed=cfg.seed, repeats=cfg.epoch_repeats,
                           rank=workers.rank, world=workers.world, batch_size=cfg.batch_size)
    loader = torch.utils.data.DataLoader(
        TrainCrops(train_split, cfg.crop_px, cfg.augment, base_scale=cfg.input_scale, synthetic=synthetic,
                   hard_negatives=hard_negatives, p_hard_negative=cfg.p_hard_negative),
        batch_size=cfg.batch_size // workers.world,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )
    steps_per_epoch = len(loader)
    lr_factor = _lr_lambda(cfg, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    loss_fn = make_loss(cfg.loss, cfg.bce_weight, reduce_sums=workers.sum_with_gradient if workers.parallel else None)

    start_epoch, global_step, best, elapsed_before = 0, 0, None, 0.0
    resumed_average: dict[str, torch.Tensor] | None = None
    if resume and last_path.exists():
        ckpt = _load_checkpoint(last_path)
        old = ckpt["config"]
        if old.get("layout") != cfg.layout:
            raise TrainError(
                f"checkpoint {last_path}: expected layout {cfg.layout!r} as configured, got {old.get('layout')!r}; "
                "use another --out or --no-resume"
            )
        changed = {k: (old.get(k), v) for k, v in cfg.to_dict().items() if k not in _RESUME_FREE_FIELDS and old.get(k) != v}
        if changed:
            log.warning("resuming %s with changed settings (old, new): %s", last_path, changed)
        if cfg.schedule == "cosine" and old.get("epochs") not in (None, cfg.epochs):
            step, saved = int(ckpt["global_step"]), ckpt["scheduler"]
            log.warning(
                "resuming %s with epochs %d instead of %s: the cosine schedule now spans %d epochs, "
                "so the learning rate moves from %.3g to %.3g at step %d",
                last_path, cfg.epochs, old["epochs"], cfg.epochs, saved["_last_lr"][0],
                saved["base_lrs"][0] * lr_factor(step), step,
            )
        model.load_state_dict(ckpt["model"])
        if supervised is not None:
            if ckpt.get("decoder_heads") is None:
                raise TrainError(
                    f"checkpoint {last_path}: expected decoder side heads (deep_supervision "
                    f"{cfg.deep_supervision}), got a run trained without them; use another --out or --no-resume"
                )
            supervised.heads.load_state_dict(ckpt["decoder_heads"])
        elif ckpt.get("decoder_heads") is not None:
            raise TrainError(
                f"checkpoint {last_path}: expected a run without deep supervision (deep_supervision 0), "
                f"got one trained with it ({old.get('deep_supervision')}); use another --out or --no-resume"
            )
        resumed_average = ckpt.get("ema_model")
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        if device.type == "cuda" and ckpt.get("cuda_rng"):
            for index, state in enumerate(ckpt["cuda_rng"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, index)
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        best, elapsed_before = ckpt.get("best"), float(ckpt.get("elapsed_s", 0.0))
        log.info("resumed from %s at epoch %d (step %d)", last_path, start_epoch, global_step)
    else:
        if last_path.exists():
            log.warning("not resuming: starting afresh in %s, overwriting its checkpoints", out_dir)
        workers.barrier()  # every process has looked at last.pt before process 0 removes it
        if workers.main:
            metrics_path.write_text("")
            for p in (last_path, best_path):
                p.unlink(missing_ok=True)
        if cfg.init_weights is not None:
            _load_init_weights(model, cfg)
    average = WeightAverage(model, cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema_decay > 0 else None
    if average is not None and resumed_average is not None:
        average.model.load_state_dict(resumed_average)
    elif average is not None and start_epoch > 0:
        log.warning("%s holds no weight average: it starts from the resumed weights", last_path)

    trained = (
        # find_unused_parameters: the backbone's final norm (kept for the official weights' keys) is unused
        nn.parallel.DistributedDataParallel(
            optimised, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
        if workers.parallel
        else optimised
    )
    log.info(
        "training %s on %s: %d train images (%s), %d val, %d steps/epoch, epochs %d..%d, device %s%s",
        cfg.layout, cfg.data_dir, len(train_split), split_summary(train_split), len(val_split or ()),
        steps_per_epoch, start_epoch + 1, cfg.epochs, device,
        f" x {workers.world} processes" if workers.parallel else "",
    )
    log.info("recipe %s", json.dumps(cfg.to_dict(), sort_keys=True))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    epoch_times: list[float] = []
    eval_times: list[float] = []
    stopped_by_budget = False
    epochs_done = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        eval_due = val_split is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs)
        spent = time.monotonic() - t_start
        expected = (max(epoch_times[-5:]) if epoch_times else 0.0) + (
            max(eval_times[-3:]) if eval_due and eval_times else 0.0
        )
        if workers.agree(spent + 1.1 * expected + 5.0 > budget_s, device):  # process 0's clock decides
            stopped_by_budget = True
            break
        if max_epochs_this_run is not None and epoch - start_epoch >= max_epochs_this_run:
            break
        t_epoch = time.monotonic()
        trained.train()
        sampler.set_epoch(epoch)
        loss_sum, n_steps, aborted = torch.zeros((), device=device), 0, False
        for image01, mask in _progress(loader, epoch, cfg.epochs):
            # one process alone may not leave an epoch: the others would wait for it
            if not workers.parallel and time.monotonic() - t_start > budget_s:
                aborted = True
                break
            image01 = image01.to(device, non_blocking=True)
            mask = mask.to(device, non_blocking=True)
            with autocast_for(device, cfg.amp):
                output = trained(to_model_input(image01))
            if supervised is not None:
                loss = deeply_supervised_loss(loss_fn, *output, mask, cfg.deep_supervision)
            else:
                loss = loss_fn(output, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip_norm > 0:
                nn.utils.clip_grad_norm_(optimised.parameters(), cfg.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            if average is not None:
                average.update(model, global_step)
            global_step += 1
            n_steps += 1
            loss_sum += loss.detach()  # no host sync per step: the CPU runs ahead of the GPU
        if aborted:
            log.warning("time budget reached during epoch %d: abandoned it, %s holds epoch %d", epoch + 1, last_path, epoch)
            stopped_by_budget = True
            break
        mean_loss = workers.mean(loss_sum).item() / max(1, n_steps)
        if not math.isfinite(mean_loss):
            raise TrainError(
                f"loss: expected finite values, got {mean_loss} in epoch {epoch + 1}; {last_path} holds epoch {epoch} "
                "(lower --lr or set grad_clip_norm)"
            )
        epoch_times.append(time.monotonic() - t_epoch)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": global_step,
            "loss": mean_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "train_s": round(epoch_times[-1], 3),
            "val": None,
        }
        if workers.main:  # the others wait: evaluation and files are process 0's
            chosen = average.model if average is not None else model
            if val_split is None and epoch + 1 == cfg.epochs:  # a refit: the schedule's end is the result
                best = {"epoch": epoch + 1, "threshold": cfg.threshold_without_val, "val": None}
                _atomic_save({"format": CHECKPOINT_FORMAT, "model": chosen.state_dict(), **best,
                              "config": cfg.to_dict()}, best_path)
            if eval_due:
                t_eval = time.monotonic()
                sweep = evaluate_split(
                    chosen, val_split, device=device, thresholds=cfg.eval_thresholds, amp=cfg.amp,
                    batch_size=cfg.eval_batch_size, scale=cfg.input_scale,
                )
                threshold, metrics = sweep.best("iou")
                at_half = sweep.results().get(0.5)
                eval_times.append(time.monotonic() - t_eval)
                record["val"] = {"threshold": threshold, **_compact(metrics)}
                if at_half is not None:
                    record["val_at_0.5"] = _compact(at_half)
                if land_val:
                    record["land_val"] = _score_land_val(chosen, land_val, cfg, device, threshold)
                record["val_s"] = round(eval_times[-1], 3)
                if best is None or metrics["iou"] > best["val"]["iou"]:
                    best = {"epoch": epoch + 1, "threshold": threshold, "val": _compact(metrics)}
                    _atomic_save(
                        {
                            "format": CHECKPOINT_FORMAT,
                            "model": chosen.state_dict(),
                            "epoch": epoch + 1,
                            "threshold": threshold,
                            "val": _compact(metrics),
                            "config": cfg.to_dict(),
                        },
                        best_path,
                    )
            record["seconds"] = round(elapsed_before + time.monotonic() - t_start, 3)
            _atomic_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "model": model.state_dict(),
                    "ema_model": average.model.state_dict() if average is not None else None,
                    "decoder_heads": supervised.heads.state_dict() if supervised is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "global_step": global_step,
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                    "best": best,
                    "config": cfg.to_dict(),
                    "elapsed_s": elapsed_before + time.monotonic() - t_start,
                },
                last_path,
            )
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            _log_epoch(record, cfg.epochs, best)
        workers.barrier()
        epochs_done = epoch + 1

    distributed.stop(workers)
    if stopped_by_budget:
        log.warning(
            "time budget of %.1f min reached after epoch %d of %d: run the same command again to resume",
            cfg.time_budget_min or 0.0, epochs_done, cfg.epochs,
        )
    return {
        "epochs_done": epochs_done,
        "epochs": cfg.epochs,
        "finished": epochs_done >= cfg.epochs,
        "stopped_by_budget": stopped_by_budget,
        "best": best,
        "last_checkpoint": str(last_path),
        "best_checkpoint": str(best_path) if best_path.exists() else None,
        "seconds": round(time.monotonic() - t_start, 3),
    }


def _progress(loader: torch.utils.data.DataLoader, epoch: int, epochs: int):  # noqa: ANN202
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; without it, no bar
        return loader
    return tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=None, dynamic_ncols=True)


def _log_epoch(record: dict[str, Any], epochs: int, best: dict[str, Any] | None) -> None:
    val = record["val"]
    val_text = (
        f" | val iou {val['iou']:.4f} niou {val['niou']:.4f} pd {val['pd']:.4f} fa {val['fa']:.2e} @{val['threshold']:.2f}"
        if val
        else ""
    )
    land = record.get("land_val")
    if land:
        val_text += f" | land pd {land['pd']:.4f} fa {land['fa']:.2e}"
    best_text = f" | best iou {best['val']['iou']:.4f} @ep{best['epoch']}" if best and best["val"] else ""
    log.info(
        "epoch %d/%d loss %.4f lr %.2e %.1fs%s%s",
        record["epoch"], epochs, record["loss"], record["lr"], record["train_s"], val_text, best_text,
    )


# --------------------------------------------------------------------------- export


def _synthetic_card_line(cfg: dict[str, Any]) -> str:
    """The model card's line on synthetic crops."""
    syn = cfg["synthetic"]
    onto = [Path(p).name for p in cfg.get("synthetic_backgrounds", ())]
    clutter = float(syn.get("p_clutter", 0.0))
    if clutter > 0:
        onto = [f"procedural land clutter ({clutter:.0%} of them)"] + onto
    busy = float(syn.get("busy_share", 0.0))
    busy_text = (f", {busy:.0%} of them on busy ground at signal-to-clutter {tuple(syn['busy_scr_range'])}"
                 if busy > 0 else "")
    return (f"- Synthetic crops: {syn['p_synthetic']:.0%} of the crops are {cfg['train_split']}-split targets pasted onto "
            f"{', '.join(onto)} (peak contrast {tuple(syn['contrast_range'])}, up to {syn['max_targets']} targets, "
            f"pasted {_PASTE_WORDS[syn.get('paste_at', 'network')]}{busy_text}).")


_PASTE_WORDS = {"network": "onto the crop rescaled for the network",
                "native": "at the background's own resolution, then rescaled with it"}


def _model_card(meta: dict[str, str], weights_path: Path, report: dict[str, Any] | None) -> str:
    cfg = json.loads(meta["train_config"])
    val = json.loads(meta["val_metrics"])  # None: a refit without a val split
    chosen_by = "chosen on val" if val else "fixed before training; no val split"
    lines = [
        f"# Model card: {weights_path.name}",
        "",
        "MiM-ISTD (Mamba-in-Mamba, IEEE TGRS 2024), reimplemented in `mim_model`, trained by `irscan train`.",
        "",
        "## Use",
        f"- Input: grey image, {meta['normalization']}; resized by **{meta['input_scale']}** (bilinear) before",
        "  the network, zero-padded to a square multiple of 64; probabilities cropped and resized back to",
        "  the input size (images over 1024 px after resizing are tiled). Any input size.",
        f"- Output: per-pixel logit; target where sigmoid(logit) > **{meta['threshold']}** ({chosen_by}).",
        f"- Token layout: `{meta['layout']}`. Weights: float16 safetensors, loaded as float32.",
        "",
        "## Training",
        f"- Data: {meta['training_data']}",
        (f"- Epochs: best checkpoint at epoch {meta['epoch']}; " if val else
         f"- Epochs: the last epoch ({meta['epoch']}) of a fixed schedule; ")
        + f"{meta['epochs_trained']} of {cfg['epochs']} trained "
        f"(input scale {cfg['input_scale']}, crop {cfg['crop_px']} px, batch {cfg['batch_size']}, "
        f"{cfg['optimizer']} lr {cfg['lr']}, "
        f"{cfg['schedule']} schedule, loss {cfg['loss']}, bf16 autocast: {cfg['amp']}).",
        "- Augmentation: " + ", ".join(f"{k}={v}" for k, v in cfg["augment"].items()),
        *([_synthetic_card_line(cfg)] if cfg.get("synthetic", {}).get("p_synthetic", 0) > 0 else []),
        *([f"- Hard negatives: {cfg['p_hard_negative']:.0%} of the crops that are not synthetic hold a place where a "
           f"network fired on no target ({', '.join(Path(p).name for p in cfg['hard_negatives'])})."]
          if cfg.get("p_hard_negative", 0) > 0 else []),
        *([f"- Fine-tuned from `{Path(cfg['init_weights']).name}` (a fresh optimizer and schedule"
           + (", any input scale)." if cfg.get("init_any_scale") else ").")]
          if cfg.get("init_weights") else []),
        *([f"- Weights: a moving average of the trained weights (decay {cfg['ema_decay']} per step"
           + (", lower in the first steps: min(decay, (1 + t) / (10 + t)))." if cfg.get("ema_warmup") else ").")]
          if cfg.get("ema_decay") else []),
        *([f"- Stochastic depth in training: residual branches dropped for up to {cfg['drop_path_rate']:.0%} of the "
           "images (the last block; linear from 0 at the first); the network here is the plain one."]
          if cfg.get("drop_path_rate") else []),
        *([f"- Deep supervision in training: side outputs on the decoder's H/16 and H/8 maps, their mean loss "
           f"weighted {cfg['deep_supervision']}; the side heads are not part of these weights."]
          if cfg.get("deep_supervision") else []),
        f"- Code: git {meta['git_commit']}; created {meta['created']}.",
        "",
        "## Results (IoU, nIoU, Pd as fractions; Fa per pixel)",
    ]
    rows = []
    if val:
        rows.append(f"| {cfg['val_split']} (selection) | {val['iou']:.4f} | {val['niou']:.4f} | {val['pd']:.4f} | "
                    f"{val['fa']:.3e} | | {val['n_targets']} |")
    if report:
        rows.append(
            f"| {report['split']} (report, exported fp16 weights) | {report['iou']:.4f} | {report['niou']:.4f} | "
            f"{report['pd']:.4f} | {report['fa']:.3e} | {report['n_images']} | {report['n_targets']} |"
        )
    if rows:
        lines += ["| split | IoU | nIoU | Pd | Fa | images | targets |", "|---|---|---|---|---|---|---|", *rows]
    else:
        lines.append("No split was evaluated at export (`irscan evaluate DATA --weights W` scores them).")
    lines += [
        "",
        "Metrics: standard IRSTD definitions at native resolution (spec section 5): IoU summed over the",
        "set, nIoU mean per image, Pd with 8-connected components matched when centroids are < 3 px",
        "apart, Fa = unmatched predicted pixels / all pixels. "
        + ("The checkpoint and the threshold were chosen on val only; the test split was not used for any choice."
           if val else "No split chose anything: the epoch (the schedule's last) and the threshold were fixed "
           "before training, and the test split was not used for any choice."),
        "",
        "## Licence and data",
        "The SIRST data (Dai et al., \"Asymmetric Contextual Modulation for Infrared Small Target",
        "Detection\", WACV 2021) is for research use with citation; none of it is in this package.",
        "The weights were trained on it: cite that paper and MiM-ISTD (Chen et al., IEEE TGRS 2024).",
        "",
    ]
    return "\n".join(lines)


def _epochs_trained(ckpt_path: Path, ckpt: dict[str, Any]) -> int:
    """Epochs done in the run (from ``last.pt`` beside ``best.pt``), else the checkpoint's epoch."""
    last = ckpt_path.with_name(LAST)
    if last.is_file() and last != ckpt_path:
        try:
            return int(_load_checkpoint(last)["epoch"])
        except TrainError:
            pass
    return int(ckpt["epoch"])


def export(
    best_checkpoint: str | Path,
    weights_path: str | Path,
    *,
    card: bool = True,
    report_split: str | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Write a training checkpoint's model as float16 safetensors, with a model card.

    Parameters
    ----------
    best_checkpoint : path
        ``best.pt`` (or ``last.pt``) from :func:`train`.
    weights_path : path
        Output ``.safetensors`` file; the card goes beside it with suffix ``.md``.
    card : bool
        Write the model card.
    report_split : str, optional
        After export, evaluate the exported weights on this split (e.g. ``"test"``) with
        the stored threshold and put the result in the card. It chooses nothing.
    device : str
        Device for the report evaluation.

    Returns
    -------
    dict
        ``weights``, ``card`` (path or None), ``metadata`` and ``report`` (or None).

    Raises
    ------
    TrainError
        If the checkpoint cannot be read.
    WeightsError
        If the weights cannot be written.
    """
    from mim_model.weights import save_safetensors

    ckpt_path = Path(best_checkpoint)
    if not ckpt_path.is_file():
        raise TrainError(f"checkpoint {ckpt_path}: expected a best.pt written by irscan train, got none there")
    ckpt = _load_checkpoint(ckpt_path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = build_model(cfg.layout)
    model.load_state_dict(ckpt["model"])
    if "threshold" in ckpt:
        threshold, val = float(ckpt["threshold"]), ckpt["val"]
    elif ckpt.get("best"):
        raise TrainError(f"checkpoint {ckpt_path}: expected best.pt (holds the chosen threshold), got last.pt")
    else:
        raise TrainError(f"checkpoint {ckpt_path}: expected a checkpoint with a val threshold, got none")
    meta = {
        "format": "irscan-mim-weights-v1",
        "layout": cfg.layout,
        "threshold": f"{threshold:.4f}",
        "input_scale": repr(float(cfg.input_scale)),
        "normalization": NORMALISATION,
        "training_data": (
            f"SIRST (Dai et al., WACV 2021), split {cfg.split_dir}/{cfg.train_split}; "
            + (f"checkpoint and threshold chosen on {cfg.split_dir}/{cfg.val_split}" if cfg.val_split else
               "no val split: the last epoch of a fixed schedule, the threshold fixed beforehand")
        ),
        "val_metrics": json.dumps(val),
        "epoch": str(ckpt["epoch"]),
        "epochs_trained": str(_epochs_trained(ckpt_path, ckpt)),
        "git_commit": _git_commit(),
        "train_config": json.dumps(cfg.to_dict(), sort_keys=True),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    weights_path = Path(weights_path)
    try:
        save_safetensors(model, weights_path, metadata=meta, dtype=torch.float16)
    except OSError as err:
        raise WeightsError(f"weights {weights_path}: expected a writable path, got {type(err).__name__}: {err}") from err
    report = None
    if report_split is not None:
        from mim_model.training.evaluate import evaluate

        report = evaluate(cfg.data_dir, report_split, weights=weights_path, device=device, split_dir=cfg.split_dir)
        report["split"] = report_split
    card_path = None
    if card:
        card_path = weights_path.with_suffix(".md")
        card_path.write_text(_model_card(meta, weights_path, report))
    log.info("exported %s (epoch %s, threshold %s) to %s", ckpt_path, ckpt["epoch"], meta["threshold"], weights_path)
    return {"weights": str(weights_path), "card": str(card_path) if card_path else None, "metadata": meta, "report": report}
