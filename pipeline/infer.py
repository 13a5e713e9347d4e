"""Tile inference: MiM-ISTD on batches of normalised tiles.

The only module of :mod:`pipeline` that imports the network (and torch). It knows
nothing of Ray: the runner wraps a :class:`TilePredictor` in an actor.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from mim_model.ops import scan_backends
from mim_model.training.inference import (
    DEFAULT_THRESHOLD,
    flip_averaged,
    model_probabilities,
    weights_threshold,
    windowed,
)
from mim_model.training.preprocess import to_model_input
from mim_model.weights import (
    DEFAULT_SCAN_WEIGHTS_PATH,
    load_model,
    load_refiner,
    read_metadata,
    weights_sha256,
)
from pipeline.errors import InputError, SettingError

__all__ = [
    "InferenceSpec", "TilePredictor", "check_tile_scale", "check_weights", "pad_batch", "resolve_device",
    "resolve_input_scale", "resolve_threshold", "resolve_weights_path", "scaled_side_px",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceSpec:
    """How tiles are run through the network.

    ``weights_path`` None means the packaged scan weights. ``device`` is ``auto`` (CUDA when
    torch sees a GPU), ``cpu`` or ``cuda``. ``amp`` runs the network under bf16 autocast on
    CUDA (the selective scan stays fp32). ``threshold`` None takes the probability
    threshold stored with the weights. ``torch_threads`` caps CPU threads per actor.
    ``flip_tta`` averages each tile's probabilities over the tile and its three flips
    (four forward passes: a quarter of the throughput, fewer false alarms). ``input_scale``
    None resizes tiles by the factor stored with the weights (the scale they were trained
    at); a number overrides it: the network then looks at targets that many times their
    size in pixels (finer for a coarser sensor, at input_scale**2 the compute).
    ``window_px`` limits what the network sees around a pixel: each tile is run as squares
    of that side (tile pixels, halo ``window_halo_px`` each side, overlapping) instead of
    whole; None runs whole tiles. The network judges a spot by its surroundings, and wide
    textured land hides targets that a small window shows (``docs/benchmarks.md``).
    """

    weights_path: str | None = None
    device: str = "auto"
    amp: bool = True
    threshold: float | None = None
    torch_threads: int | None = None
    flip_tta: bool = False
    input_scale: float | None = None
    window_px: int | None = None
    window_halo_px: int = 16

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"device: expected auto, cpu or cuda, got {self.device!r}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise InputError(f"threshold: expected a probability in (0, 1), got {self.threshold}")
        if self.input_scale is not None and not (math.isfinite(self.input_scale) and 0.25 <= self.input_scale <= 8):
            raise InputError(f"input_scale: expected a factor from 0.25 to 8, got {self.input_scale}")
        for name in ("window_px", "window_halo_px"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InputError(f"{name}: expected an integer number of pixels, got {value!r}")
        if self.window_halo_px < 0:
            raise InputError(f"window_halo_px: expected >= 0, got {self.window_halo_px}")
        if self.window_px is not None and self.window_px <= 2 * self.window_halo_px:
            raise InputError(
                f"window_px: expected more than 2 * window_halo_px = {2 * self.window_halo_px}, got {self.window_px}"
            )
        if self.weights_path is not None and not Path(self.weights_path).is_file():
            raise InputError(f"weights: file {self.weights_path} does not exist")


def resolve_weights_path(spec: InferenceSpec) -> Path:
    """The weights a scan runs: ``spec.weights_path``, else the packaged scan weights."""
    return Path(spec.weights_path) if spec.weights_path else DEFAULT_SCAN_WEIGHTS_PATH


def check_weights(spec: InferenceSpec) -> None:
    """Load the scan's network (and its refiner, if the file carries one) once on the CPU, so
    that a weights file that does not match fails here, as one line, and not inside every
    Ray actor. About a second for the ~10 MB of the packaged weights.

    Raises
    ------
    mim_model.errors.WeightsError
        The file is missing, unreadable, or its tensors do not match the network.
    """
    path = resolve_weights_path(spec)
    load_model(path)
    load_refiner(path)


def _metadata_number(spec: InferenceSpec, key: str, default: float) -> float:
    """A number stored in the weights' metadata, read without loading the network."""
    path = resolve_weights_path(spec)
    raw = read_metadata(path).get(key)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingError(f"{path}: metadata {key}: expected a number, got {raw!r}", "weights") from None


def resolve_threshold(spec: InferenceSpec) -> float:
    """The decision threshold without loading the network: the spec's, else the one
    stored with the weights, else 0.5."""
    if spec.threshold is not None:
        return spec.threshold
    return _metadata_number(spec, "threshold", DEFAULT_THRESHOLD)


def resolve_input_scale(spec: InferenceSpec) -> float:
    """The factor tiles are resized by: the spec's, else the weights' ``input_scale``
    (default 1), read without loading the network."""
    if spec.input_scale is not None:
        return spec.input_scale
    return _metadata_number(spec, "input_scale", 1.0)


def scaled_side_px(side_px: int, scale: float, source: str = "input_scale", field: str = "tile_px",
                   what: str = "tiles") -> int:
    """Side of a ``side_px`` square (a tile, or a window: ``field`` and ``what`` name it in
    the error) resized by ``scale``; the network needs a multiple of 64 (``source`` names
    where the scale comes from in the error)."""
    scaled = round(side_px * scale)
    if scaled % 64:
        raise SettingError(
            f"{field}: {what} are resized by {source} {scale}; {side_px} px becomes {scaled} px, "
            "expected a multiple of 64", field
        )
    return scaled


def check_tile_scale(spec: InferenceSpec, tile_px: int) -> float:
    """The input scale (:func:`resolve_input_scale`); the scaled tile, and the scaled
    window when there is one, must stay multiples of 64 (that the window fits the tile is
    :class:`pipeline.config.ScanConfig`'s check)."""
    scale = resolve_input_scale(spec)
    source = "input_scale" if spec.input_scale is not None else "the weights' input_scale"
    scaled_side_px(tile_px, scale, source)
    if spec.window_px is not None:
        scaled_side_px(spec.window_px, scale, source, "window_px", "windows")
    return scale


def pad_batch(tiles01: npt.NDArray[np.float32], batch_size: int) -> npt.NDArray[np.float32]:
    """(B, T, T) tiles padded with empty tiles to (batch_size, T, T) when B < batch_size.

    On a GPU every new input shape costs cuDNN a new algorithm search (seconds with
    ``cudnn.benchmark``), so actors run every batch at one size; in eval mode each tile's
    result does not depend on the others in its batch.
    """
    count = len(tiles01)
    if count >= batch_size:
        return tiles01
    pad = np.zeros((batch_size - count, *tiles01.shape[1:]), tiles01.dtype)
    return np.concatenate([tiles01, pad])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SettingError("device: cuda was asked for but torch sees no CUDA GPU", "device")
    return torch.device(name)


class TilePredictor:
    """Loads the network once; :meth:`predict` maps (B, T, T) tiles in [0, 1] to
    (B, T, T) float32 target probabilities.

    ``margin_px`` (tile pixels) is the margin of each tile whose probabilities the caller
    throws away (the tile's halo): with ``spec.window_px`` the windows cover only the rest.

    When the weights file carries an outline refiner (:mod:`mim_model.refiner`; the packaged
    scan weights do not), it is applied last, to each whole tile at the scene's resolution,
    with the tile's own mean and spread; its reach (15 px) lies well inside the default halo (64 px).
    """

    def __init__(self, spec: InferenceSpec, margin_px: int = 0) -> None:
        self.spec = spec
        self.margin_px = margin_px
        self.device = resolve_device(spec.device)
        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        elif self.device.type == "cpu":
            # Ray sets OMP_NUM_THREADS=1 in its workers; a CPU actor should use the node's cores
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        weights_path = resolve_weights_path(spec)
        self.model = load_model(weights_path, device=self.device)
        self.refiner = load_refiner(weights_path, device=self.device)
        self.threshold = spec.threshold if spec.threshold is not None else weights_threshold(self.model)
        self.input_scale = resolve_input_scale(spec)
        self.weights_sha256 = weights_sha256(weights_path)
        backends = scan_backends()
        log.info(
            "tile predictor on %s (pid %d): layout %s, threshold %.3f, outline refiner %s, scan backends %s",
            self.device_name, os.getpid(), self.model.config.layout, self.threshold,
            "on" if self.refiner is not None else "none", backends,
        )

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({torch.get_num_threads()} threads)"

    @torch.inference_mode()
    def predict(self, tiles01: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """(B, T, T) grey tiles in [0, 1] -> (B, T, T) probabilities (float32, host)."""
        if tiles01.ndim != 3 or tiles01.shape[1] != tiles01.shape[2]:
            raise InputError(f"tiles: expected shape (B, T, T), got {tiles01.shape}")
        side = tiles01.shape[-1]
        batch = torch.from_numpy(np.ascontiguousarray(tiles01, dtype=np.float32))[:, None]
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        native = batch
        if self.input_scale != 1.0:
            # the weights were trained on images resized by a factor (or the user asks for one): resize, and back
            scaled_side = scaled_side_px(side, self.input_scale)
            batch = torch.nn.functional.interpolate(batch, size=(scaled_side, scaled_side), mode="bilinear",
                                                    align_corners=False, antialias=self.input_scale < 1)

        def network(x: torch.Tensor) -> torch.Tensor:
            return flip_averaged(lambda y: model_probabilities(self.model, y, self.device, self.spec.amp),
                                 x, self.spec.flip_tta)

        x = to_model_input(batch)
        if self.spec.window_px is None:
            probs = network(x)
        else:
            scale = self.input_scale
            window = scaled_side_px(self.spec.window_px, scale, field="window_px", what="windows")
            try:
                probs = windowed(network, x, window, round(self.spec.window_halo_px * scale), round(self.margin_px * scale))
            except ValueError as error:
                raise InputError(f"tiles of {side} px with margin {self.margin_px} px: {error}") from None
        if self.input_scale != 1.0:
            probs = torch.nn.functional.interpolate(probs, size=(side, side), mode="bilinear",
                                                    align_corners=False, antialias=self.input_scale > 1)
        if self.refiner is not None:  # the weights carry an outline refiner: it works on the native tile
            probs = torch.sigmoid(self.refiner(native, probs.float()))
        return probs[:, 0].cpu().numpy()

    def timed_predict(self, tiles01: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.float32], float]:
        start = time.perf_counter()
        probs = self.predict(tiles01)
        return probs, time.perf_counter() - start
