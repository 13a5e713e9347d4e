"""Run the network on whole images of any size: rescale, pad, tile, crop back.

Weights trained by ``irscan train`` record ``input_scale`` (default 2): the network sees
every image resized by that factor (bilinear), and its probabilities are resized back to
the input size (bilinear, antialiased). The head of MiM works at 1/4 resolution; at 2x the
typical 3-7 px SIRST target spans enough head cells to get its outline right, which
raised val IoU and nIoU markedly (see ``mim_model/training/train.py``).

MiM-ISTD needs square inputs whose side is a multiple of 64 (spec section 1). An image of
(H, W) with max(H, W) <= ``max_side_px`` is zero-padded at the bottom and right to the
smallest such square, run whole, and the probabilities are cropped back to (H, W).
Zero (black) padding is what the network saw during training (crops of small rescaled
images are zero-padded), and the padded region is cropped away. Images of the same
padded side are batched together.

Larger images are cut into ``tile_px`` squares that overlap by at least ``2 * halo_px``;
each output pixel is taken from the tile in which it lies farthest from a cut (the
overlaps are split at their middle), so no pixel within ``halo_px`` of a tile's inner
edge is used. The network's receptive field is global (the scan), so tiled and whole
results differ slightly; tiling bounds memory for any image size.

A weights file may carry an outline refiner (:mod:`mim_model.refiner`); given one,
:func:`predict_probs` applies it last, to each image's probabilities at native size.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from mim_model.errors import InputShapeError, MiMError
from mim_model.refiner import OutlineRefiner, refine_probs
from mim_model.training.preprocess import to_model_input

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_THRESHOLD",
    "InferenceOptionError",
    "SIDE_MULTIPLE_PX",
    "TTA_FLIP_DIMS",
    "autocast_for",
    "axis_tiles",
    "check_inference_options",
    "flip_averaged",
    "model_probabilities",
    "padded_side",
    "predict_probs",
    "weights_input_scale",
    "weights_threshold",
    "windowed",
]

SIDE_MULTIPLE_PX = 64

#: Used when a weights file records no threshold (logit > 0).
DEFAULT_THRESHOLD = 0.5


class InferenceOptionError(MiMError, ValueError):
    """An inference option outside its range (a threshold that is not a probability, ...)."""


def check_inference_options(*, threshold: float | None, batch_size: int,
                            error: type[Exception] = InferenceOptionError) -> None:
    """Refuse a ``threshold`` outside (0, 1) (None: the weights' own) and a ``batch_size`` < 1,
    which would give all-empty or all-target masks, or no answer, instead of an error."""
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise error(f"threshold: expected a probability in (0, 1), got {threshold}")
    if batch_size < 1:
        raise error(f"batch_size: expected an integer >= 1, got {batch_size}")


def _metadata_float(model: object, key: str, default: float) -> float:
    meta = getattr(model, "weights_metadata", None) or {}
    try:
        return float(meta.get(key, default))
    except ValueError:
        log.warning("weights metadata %s=%r is not a number: using %s", key, meta.get(key), default)
        return default


def weights_threshold(model: object) -> float:
    """Probability threshold stored with the weights (metadata ``threshold``), else 0.5."""
    return _metadata_float(model, "threshold", DEFAULT_THRESHOLD)


def weights_input_scale(model: object) -> float:
    """Resize factor the weights were trained at (metadata ``input_scale``), else 1.0.

    The network must see images resized by this factor; :func:`predict_probs` does it
    with ``scale=`` and resizes the probabilities back.
    """
    return _metadata_float(model, "input_scale", 1.0)


def padded_side(h: int, w: int, multiple: int = SIDE_MULTIPLE_PX) -> int:
    """Smallest multiple of ``multiple`` that is >= both sides, pixels."""
    return max(multiple, -(-max(h, w) // multiple) * multiple)


def axis_tiles(size: int, tile: int, halo: int) -> list[tuple[int, int, int]]:
    """Tiles along one axis as ``(start, keep_start, keep_stop)`` in image pixels.

    The keep ranges partition ``[0, size)``. With ``size <= tile`` there is one tile
    starting at 0 (zero-padded to ``tile`` by the caller).

    Raises
    ------
    ValueError
        If ``tile <= 2 * halo``.
    """
    if tile <= 2 * halo:
        raise ValueError(f"tile_px: expected more than 2 * halo_px = {2 * halo}, got {tile}")
    if size <= tile:
        return [(0, 0, size)]
    step = tile - 2 * halo
    starts = list(range(0, size - tile, step)) + [size - tile]
    bounds = [0] + [(s + tile + s_next) // 2 for s, s_next in zip(starts[:-1], starts[1:], strict=True)] + [size]
    return [(s, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def autocast_for(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``amp``; a no-op otherwise. The scan ops compute in fp32."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: Flips averaged by test-time augmentation (dims of a (B, C, H, W) tensor): none,
#: left-right, up-down, both. Chosen on val: the four flips raised val IoU (0.743 -> 0.761
#: with the first fine-tuned weights); adding the four transposes lowered it again.
TTA_FLIP_DIMS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


def flip_averaged(
    probabilities: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, flip_tta: bool
) -> torch.Tensor:
    """``probabilities(x)`` (B, 1, H, W); with ``flip_tta`` the mean of it over the flips of
    :data:`TTA_FLIP_DIMS`, each flipped back (four forward passes)."""
    if not flip_tta:
        return probabilities(x)
    total = torch.zeros((), device=x.device)
    for dims in TTA_FLIP_DIMS:
        if dims:
            total = total + torch.flip(probabilities(torch.flip(x, dims)), dims)
        else:
            total = total + probabilities(x)
    return total / len(TTA_FLIP_DIMS)


def windowed(
    probabilities: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    window_px: int,
    halo_px: int,
    margin_px: int = 0,
    max_windows: int | None = None,
) -> torch.Tensor:
    """``probabilities`` (B, C, S, S) -> (B, 1, S, S) run on ``window_px`` squares of ``x``
    instead of the whole input: the network's context is limited to the window.

    The windows cover ``[margin_px, S - margin_px)`` on each axis (the part of a tile the
    caller keeps); each output pixel comes from a window in which it lies at least
    ``halo_px`` from a cut (:func:`axis_tiles`), so windows overlap by ``2 * halo_px`` and
    windows reach ``halo_px`` into the margin. Pixels farther out than that stay 0.
    Windows run in equal groups of at most ``max_windows`` (default: as many pixels as
    ``x`` holds), the last padded to that size so that the network always sees one batch
    shape.

    Raises
    ------
    ValueError
        If the window does not fit (``window_px`` > S, ``margin_px`` < ``halo_px``) or its
        core is empty.
    """
    batch, channels, side, _ = x.shape
    if window_px <= 2 * halo_px or window_px > side or margin_px < halo_px or 2 * margin_px >= side:
        raise ValueError(
            f"window: expected 2 * halo ({2 * halo_px}) < window ({window_px}) <= input side ({side}) "
            f"and halo ({halo_px}) <= margin ({margin_px}) < side / 2"
        )
    first = margin_px - halo_px
    spans = axis_tiles(side - 2 * first, window_px, halo_px)
    count = len(spans)
    starts = torch.tensor([first + start for start, _, _ in spans], device=x.device)
    # one gather: (B, C, n, n, w, w) -> (B * n * n, C, w, w), windows in row-major order per tile
    pixels = starts[:, None] + torch.arange(window_px, device=x.device)
    crops = x[:, :, pixels[:, None, :, None], pixels[None, :, None, :]]
    crops = crops.permute(0, 2, 3, 1, 4, 5).reshape(batch * count * count, channels, window_px, window_px)
    # groups of equal size, at most ``max_windows`` (default: as many pixels as x): no group
    # is mostly padding (2,304 windows in groups of 1,024 would run 3,072)
    limit = max_windows or max(1, batch * side * side // (window_px * window_px))
    group = -(-len(crops) // -(-len(crops) // limit))
    parts = []
    for i in range(0, len(crops), group):
        chunk = crops[i : i + group]
        if len(chunk) < group:  # one batch shape for the network (cuDNN searches again for each new one)
            chunk = torch.cat([chunk, chunk.new_zeros((group - len(chunk), *chunk.shape[1:]))])
        parts.append(probabilities(chunk)[:, 0].float())
    probs = torch.cat(parts)[: len(crops)].reshape(batch, count, count, window_px, window_px)
    # each kept pixel from its window (the keep ranges of axis_tiles partition the covered span)
    owner = torch.cat([torch.full((keep1 - keep0,), k) for k, (_, keep0, keep1) in enumerate(spans)]).to(x.device)
    local = torch.arange(side - 2 * first, device=x.device) + first - starts[owner]
    out = torch.zeros((batch, 1, side, side), dtype=torch.float32, device=x.device)
    out[:, 0, first : side - first, first : side - first] = probs[
        :, owner[:, None], owner[None, :], local[:, None], local[None, :]
    ]
    return out


def model_probabilities(model: torch.nn.Module, x: torch.Tensor, device: torch.device, amp: bool) -> torch.Tensor:
    """sigmoid(model(x)) in float32 for network input ``x`` (B, 3, S, S), under bf16
    autocast on CUDA when ``amp``."""
    with autocast_for(device, amp):
        logits = model(x)
    return torch.sigmoid(logits.float())


def _run_batch(
    model: torch.nn.Module, batch: torch.Tensor, device: torch.device, amp: bool, flip_tta: bool = False
) -> torch.Tensor:
    """grey01 (B, 1, S, S) on CPU -> probabilities (B, S, S) float32 on CPU."""
    x = to_model_input(batch.to(device, non_blocking=True))
    probs = flip_averaged(lambda inputs: model_probabilities(model, inputs, device, amp), x, flip_tta)
    return probs[:, 0].cpu()


def _batches(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.inference_mode()
def predict_probs(
    model: torch.nn.Module,
    images: Sequence[npt.NDArray[np.float32]],
    *,
    device: torch.device | str = "cpu",
    amp: bool = True,
    batch_size: int = 8,
    max_side_px: int = 1024,
    tile_px: int = 512,
    halo_px: int = 64,
    scale: float = 1.0,
    flip_tta: bool = False,
    refiner: OutlineRefiner | None = None,
) -> list[npt.NDArray[np.float32]]:
    """Target probabilities for grey images of any size.

    Parameters
    ----------
    model : torch.nn.Module
        MiM (or anything with its I/O contract), already on ``device``; put in eval mode here.
    images : sequence of ndarray float32 (H, W)
        Grey images in [0, 1] (8-bit / 255), any sizes.
    device : torch.device or str
    amp : bool
        bf16 autocast on CUDA (ignored on CPU).
    batch_size : int
        Images (or tiles) per forward pass.
    max_side_px : int
        Images with a longer side than this are tiled.
    tile_px, halo_px : int
        Tile side (multiple of 64) and minimum margin kept from tile cuts, pixels.
    scale : float
        The network runs on the image resized by this factor (bilinear) and the
        probabilities are resized back (bilinear, antialiased) to the input size. It must
        match the scale the weights were trained at (metadata ``input_scale``).
    flip_tta : bool
        Average the probabilities over the image and its flips (:data:`TTA_FLIP_DIMS`):
        four times the compute, fewer false alarms.
    refiner : OutlineRefiner, optional
        Applied to each image's probabilities at its native size, on the refiner's device
        (:func:`mim_model.refiner.refine_probs`); the weights file's own refiner, if any, comes
        from :func:`mim_model.weights.load_refiner`.

    Returns
    -------
    list of ndarray float32 (H, W)
        sigmoid(logits), same sizes as the inputs.

    Raises
    ------
    InputShapeError
        If an image is not 2-D or ``tile_px`` is not a multiple of 64.
    """
    device = torch.device(device)
    if tile_px % SIDE_MULTIPLE_PX:
        raise InputShapeError(f"tile_px: expected a multiple of {SIDE_MULTIPLE_PX}, got {tile_px}")
    model.eval()
    out: list[npt.NDArray[np.float32] | None] = [None] * len(images)
    scaled = [_rescale(np.asarray(img, dtype=np.float32), scale) if img.ndim == 2 else img for img in images]
    by_side: dict[int, list[int]] = defaultdict(list)
    for i, img in enumerate(scaled):
        if img.ndim != 2:
            raise InputShapeError(f"image {i}: expected a 2-D (H, W) grey array, got shape {img.shape}")
        h, w = img.shape
        if max(h, w) <= max_side_px:
            by_side[padded_side(h, w)].append(i)
        else:
            out[i] = _predict_tiled(model, img, device, amp, batch_size, tile_px, halo_px, flip_tta)
    for side, idx in by_side.items():
        for chunk in _batches(idx, batch_size):
            batch = torch.zeros((len(chunk), 1, side, side), dtype=torch.float32)
            for j, i in enumerate(chunk):
                h, w = scaled[i].shape
                batch[j, 0, :h, :w] = torch.from_numpy(scaled[i])
            probs = _run_batch(model, batch, device, amp, flip_tta)
            for j, i in enumerate(chunk):
                h, w = scaled[i].shape
                out[i] = probs[j, :h, :w].numpy().copy()
    native = [_resize_to(p, img.shape) for p, img in zip(out, images, strict=True)]  # type: ignore[arg-type]
    if refiner is None:
        return native
    return [refine_probs(refiner, img, p) for img, p in zip(images, native, strict=True)]


def _rescale(img: npt.NDArray[np.float32], scale: float) -> npt.NDArray[np.float32]:
    """Resize a (H, W) image by ``scale`` (bilinear; antialiased when shrinking)."""
    if scale == 1.0:
        return img
    h, w = img.shape
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=scale < 1).numpy()[0, 0]


def _resize_to(prob: npt.NDArray[np.float32], shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """Resize probabilities back to the input's (H, W) (bilinear; antialiased when shrinking)."""
    if prob.shape == tuple(shape):
        return prob
    t = torch.from_numpy(np.ascontiguousarray(prob))[None, None]
    shrink = prob.shape[0] > shape[0] or prob.shape[1] > shape[1]
    return F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False, antialias=shrink).numpy()[0, 0]


def _predict_tiled(
    model: torch.nn.Module,
    img: npt.NDArray[np.float32],
    device: torch.device,
    amp: bool,
    batch_size: int,
    tile_px: int,
    halo_px: int,
    flip_tta: bool = False,
) -> npt.NDArray[np.float32]:
    h, w = img.shape
    prob = np.zeros((h, w), dtype=np.float32)
    tiles = [(r, c) for r in axis_tiles(h, tile_px, halo_px) for c in axis_tiles(w, tile_px, halo_px)]
    for chunk in _batches(tiles, batch_size):
        batch = torch.zeros((len(chunk), 1, tile_px, tile_px), dtype=torch.float32)
        for j, ((r0, _, _), (c0, _, _)) in enumerate(chunk):
            window = img[r0 : r0 + tile_px, c0 : c0 + tile_px]
            batch[j, 0, : window.shape[0], : window.shape[1]] = torch.from_numpy(np.asarray(window, dtype=np.float32))
        probs = _run_batch(model, batch, device, amp, flip_tta).numpy()
        for j, ((r0, rk0, rk1), (c0, ck0, ck1)) in enumerate(chunk):
            prob[rk0:rk1, ck0:ck1] = probs[j, rk0 - r0 : rk1 - r0, ck0 - c0 : ck1 - c0]
    return prob
