"""SIRST-layout data: split files, image and mask loading, training augmentation.

Layout of a data directory (as ``../shared/data/sirst``)::

    images/<id>.png            any mode PIL reads; loaded as grey (PIL ``convert("L")``)
    masks/<id>_pixels0.png     8-bit, target where the value is > 127
    idx_427/<split>.txt        one id per line (train, val, test, trainval)

A split name is looked up as ``<data_dir>/<split_dir>/<split>.txt``; a path to a ``.txt``
file is also accepted.

Training samples are square crops of ``crop_px`` (a multiple of 64) after a random rescale
(the network's input scale times a factor log-uniform in ``scale_range``), brightness and contrast jitter, optional Gaussian blur
and a random element of the dihedral group D4 (flips and 90-degree turns). With
probability ``p_target_crop`` the crop is placed so that it contains a random target
pixel; otherwise it is uniform. Optionally a share of the crops that are not synthetic are
centred on a *hard negative*, an object a network fired on where there is no target
(:mod:`mim_model.training.hard_negatives`). Where the (rescaled) image is smaller than the crop the
rest is zero (black), as ACM's loader does; evaluation pads with zeros too. With
``mosaic`` n > 1 a real crop is n x n such crops of ``crop_px / n`` side by side, each from an
image drawn at random (the first from the sampled index): a crop as large as a scanned tile
then holds real images throughout, not mostly padding. Optionally a
share of the crops are synthetic: SIRST train targets on satellite IR backgrounds
(:mod:`mim_model.training.synthetic`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageFilter, UnidentifiedImageError

from mim_model.errors import MiMError
from mim_model.training.preprocess import grey_uint8_to_01

if TYPE_CHECKING:
    from mim_model.training.hard_negatives import HardNegativePool
    from mim_model.training.synthetic import SyntheticSource

__all__ = [
    "DatasetError",
    "Augment",
    "SirstSplit",
    "TrainCrops",
    "EpochSampler",
    "read_split",
    "load_grey",
    "load_grey01",
    "load_mask",
    "augment_sample",
    "mosaic_sample",
]

log = logging.getLogger(__name__)

IMAGE_DIR = "images"
MASK_DIR = "masks"
MASK_SUFFIX = "_pixels0.png"
DEFAULT_SPLIT_DIR = "idx_427"


class DatasetError(MiMError, ValueError):
    """A data directory, split file, image or mask cannot be used (message names the file)."""


# --------------------------------------------------------------------------- reading


def split_path(data_dir: str | Path, split: str, split_dir: str = DEFAULT_SPLIT_DIR) -> Path:
    """Path of a split file: ``split`` itself if it ends in ``.txt``, else ``data_dir/split_dir/split.txt``."""
    if split.endswith(".txt"):
        return Path(split)
    return Path(data_dir) / split_dir / f"{split}.txt"


def read_split(data_dir: str | Path, split: str, split_dir: str = DEFAULT_SPLIT_DIR) -> list[str]:
    """Image ids of a split, in file order.

    Parameters
    ----------
    data_dir : path
        The data directory (holds ``images/``, ``masks/`` and ``split_dir/``).
    split : str
        Split name (``train``, ``val``, ``test``, ...) or a path to a ``.txt`` file.
    split_dir : str
        Folder of the split files under ``data_dir``.

    Returns
    -------
    list of str
        Ids, blank lines and surrounding space dropped.

    Raises
    ------
    DatasetError
        If the data directory or the split file is missing, or the split file lists no id.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"data directory {data_dir}: expected a directory, got none there")
    path = split_path(data_dir, split, split_dir)
    if not path.is_file():
        raise DatasetError(f"split file {path}: expected a file listing image ids, got none there")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"split file {path}: expected at least one image id, got an empty file")
    return ids


def load_grey(path: str | Path, what: str = "image") -> npt.NDArray[np.uint8]:
    """An image file as 8-bit grey (H, W), via PIL ``convert("L")``; ``what`` names the file
    in errors (``"mask"``).

    Raises
    ------
    DatasetError
        If the file is missing or PIL cannot read it.
    """
    return np.asarray(_open_image(path, what).convert("L"), dtype=np.uint8)


def _open_image(path: str | Path, what: str = "image") -> Image.Image:
    """The image file, loaded by PIL; a missing or unreadable file is a DatasetError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{what} {path}: expected an image file, got none there")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetError(f"{what} {path}: expected an image PIL can read, got {type(err).__name__}: {err}") from err


def load_grey01(path: str | Path) -> npt.NDArray[np.float32]:
    """An image file as float32 grey (H, W) in [0, 1].

    8-bit images (and RGB, palette, ...) are converted with PIL ``convert("L")`` and
    divided by 255, exactly as in training. Images of 16-bit or float pixels (modes
    ``I;16``, ``I``, ``F``) are stretched linearly from their min..max to [0, 1], with a
    warning: the network was trained on 8-bit images.

    Raises
    ------
    DatasetError
        If the file is missing or PIL cannot read it.
    """
    im = _open_image(path)
    if im.mode.startswith("I") or im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if arr.ndim == 3:
            arr = arr.mean(axis=2)
        lo, hi = float(arr.min()), float(arr.max())
        log.warning("image %s has %s pixels: stretched min..max %g..%g to 0..1", path, im.mode, lo, hi)
        return ((arr - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def load_mask(path: str | Path, expected_hw: tuple[int, int] | None = None) -> npt.NDArray[np.bool_]:
    """A mask file as bool (H, W): grey value > 127 is target.

    Parameters
    ----------
    path : path
        The mask file.
    expected_hw : (int, int), optional
        (H, W) of its image; a mask of another size is an error.

    Raises
    ------
    DatasetError
        If the file is missing or unreadable, or its size differs from ``expected_hw``.
    """
    mask = load_grey(path, "mask") > 127
    if expected_hw is not None and mask.shape != tuple(expected_hw):
        raise DatasetError(
            f"mask {path}: expected the image's size (H, W) = {tuple(expected_hw)}, got {mask.shape}"
        )
    return mask


@dataclass(frozen=True, slots=True)
class SirstSplit:
    """The images and masks of one split, loaded in memory (SIRST is small: ~30 MB in all).

    Attributes
    ----------
    ids : tuple of str
        Image ids in split-file order.
    images : tuple of ndarray uint8 (H, W)
        Grey images.
    masks : tuple of ndarray bool (H, W)
        Target masks, same sizes as the images.
    """

    ids: tuple[str, ...]
    images: tuple[npt.NDArray[np.uint8], ...]
    masks: tuple[npt.NDArray[np.bool_], ...]

    @classmethod
    def load(cls, data_dir: str | Path, split: str, split_dir: str = DEFAULT_SPLIT_DIR) -> SirstSplit:
        """Read a split's ids, images and masks, checking every file.

        Raises
        ------
        DatasetError
            Missing or empty split file, missing or unreadable image or mask, or a mask
            whose size differs from its image's.
        """
        data_dir = Path(data_dir)
        ids = read_split(data_dir, split, split_dir)
        images, masks = [], []
        for image_id in ids:
            image = load_grey(data_dir / IMAGE_DIR / f"{image_id}.png")
            mask = load_mask(data_dir / MASK_DIR / f"{image_id}{MASK_SUFFIX}", image.shape)
            images.append(image)
            masks.append(mask)
        log.info("split %s of %s: %d images", split, data_dir, len(ids))
        return cls(tuple(ids), tuple(images), tuple(masks))

    def __len__(self) -> int:
        return len(self.ids)

    def images01(self) -> list[npt.NDArray[np.float32]]:
        """The images as the network takes them: float32 in [0, 1] (8-bit value / 255)."""
        return [grey_uint8_to_01(image) for image in self.images]


# --------------------------------------------------------------------------- augmentation


@dataclass(frozen=True, slots=True, kw_only=True)
class Augment:
    """Training augmentation settings (see the module docstring).

    Attributes
    ----------
    scale_range : (float, float)
        Rescale factor relative to the training's ``input_scale``, drawn log-uniform in
        this range (the image is resized by ``input_scale * factor``).
    p_target_crop : float
        Probability that the crop is placed to contain a target pixel.
    flips : bool
        Random element of D4 (h-flip, v-flip, transpose).
    brightness : float
        Additive brightness shift, uniform in +-brightness (on [0, 1] pixels).
    contrast : float
        Contrast factor about the image mean, uniform in 1 +- contrast.
    p_blur : float
        Probability of a Gaussian blur of radius uniform in (0, ``blur_radius_px``).
    blur_radius_px : float
        Largest blur radius in pixels.
    mosaic : int
        A real crop is ``mosaic`` x ``mosaic`` crops of ``crop_px / mosaic`` px, each from a
        random image (1: one crop of one image).
    """

    scale_range: tuple[float, float] = (0.6, 1.6)
    p_target_crop: float = 0.8
    flips: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    p_blur: float = 0.2
    blur_radius_px: float = 1.0
    mosaic: int = 1

    def __post_init__(self) -> None:
        if self.mosaic < 1:
            raise ValueError(f"mosaic: expected a whole number >= 1, got {self.mosaic}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range: expected 0 < low <= high, got {self.scale_range}")
        for name in ("p_target_crop", "p_blur"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value}")


def _crop_start(size: int, crop: int, rng: np.random.Generator, target: int | None, margin: int) -> int:
    """Start (may be negative) of a crop of ``crop`` px along an axis of ``size`` px.

    The crop stays within the image where the image is larger, and holds the whole image
    where it is smaller. With ``target`` given, the crop also holds that pixel with
    ``margin`` px to spare where possible.
    """
    lo, hi = min(0, size - crop), max(0, size - crop)
    if target is not None:
        t_lo, t_hi = max(lo, target - crop + 1 + margin), min(hi, target - margin)
        if t_lo <= t_hi:
            lo, hi = t_lo, t_hi
    return int(rng.integers(lo, hi + 1))


def _window(array: npt.NDArray, r0: int, c0: int, crop: int) -> npt.NDArray:
    """array[r0:r0+crop, c0:c0+crop] with zeros wherever the window leaves the array."""
    out = np.zeros((crop, crop), dtype=array.dtype)
    h, w = array.shape
    rs, re = max(r0, 0), min(r0 + crop, h)
    cs, ce = max(c0, 0), min(c0 + crop, w)
    if rs < re and cs < ce:
        out[rs - r0 : re - r0, cs - c0 : ce - c0] = array[rs:re, cs:ce]
    return out


def _draw_scale(aug: Augment, rng: np.random.Generator) -> float:
    """The augmentation's rescale factor, log-uniform in ``aug.scale_range``."""
    lo, hi = aug.scale_range
    return math.exp(rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo


def augment_sample(
    image: npt.NDArray[np.uint8],
    mask: npt.NDArray[np.bool_],
    crop_px: int,
    aug: Augment,
    rng: np.random.Generator,
    base_scale: float = 1.0,
    focus_rc: tuple[float, float] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """One augmented training crop.

    Parameters
    ----------
    image : ndarray uint8 (H, W)
    mask : ndarray bool (H, W)
    crop_px : int
        Side of the square crop, pixels.
    aug : Augment
    rng : numpy Generator
    base_scale : float
        The network's input scale; the drawn factor multiplies it.
    focus_rc : (float, float), optional
        A point (row, col) of ``image``'s pixels that the crop holds (placed at random
        within it, as a target pixel is); ``aug.p_target_crop`` is then not drawn.

    Returns
    -------
    image01, mask01 : ndarray float32 (crop_px, crop_px)
        Grey in [0, 1] (zero where padded) and the 0/1 mask.
    """
    h, w = image.shape
    scale = base_scale * _draw_scale(aug, rng)
    img_pil = Image.fromarray(image)
    if abs(scale - 1.0) > 1e-3:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img_pil = img_pil.resize(size, Image.Resampling.BILINEAR)
        m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)) > 127
        if not m.any() and mask.any():  # a tiny target vanished on shrinking: keep its peak pixel
            m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)) > 0
        mask = m
    if aug.p_blur > 0 and rng.random() < aug.p_blur:
        img_pil = img_pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.0, aug.blur_radius_px))))
    img = np.asarray(img_pil, dtype=np.float32) / 255.0
    if aug.contrast > 0 or aug.brightness > 0:
        c = 1.0 + rng.uniform(-aug.contrast, aug.contrast)
        b = rng.uniform(-aug.brightness, aug.brightness)
        mean = float(img.mean())
        img = np.clip((img - mean) * c + mean + b, 0.0, 1.0).astype(np.float32)

    hs, ws = img.shape
    target_rc: tuple[int, int] | None = None
    if focus_rc is not None:  # the point's pixel on the rescaled grid
        target_rc = (min(hs - 1, max(0, round((focus_rc[0] + 0.5) * hs / h - 0.5))),
                     min(ws - 1, max(0, round((focus_rc[1] + 0.5) * ws / w - 0.5))))
    elif aug.p_target_crop > 0 and rng.random() < aug.p_target_crop:
        rows, cols = np.nonzero(mask)
        if len(rows):
            k = int(rng.integers(len(rows)))
            target_rc = (int(rows[k]), int(cols[k]))
    margin = min(8, crop_px // 4)
    r0 = _crop_start(hs, crop_px, rng, None if target_rc is None else target_rc[0], margin)
    c0 = _crop_start(ws, crop_px, rng, None if target_rc is None else target_rc[1], margin)
    img = _window(img, r0, c0, crop_px)
    msk = _window(mask.astype(np.float32), r0, c0, crop_px)

    if aug.flips:
        img, msk = random_d4(img, msk, rng)
    return np.ascontiguousarray(img), np.ascontiguousarray(msk)


def mosaic_sample(
    images: Sequence[npt.NDArray[np.uint8]],
    masks: Sequence[npt.NDArray[np.bool_]],
    index: int,
    crop_px: int,
    aug: Augment,
    rng: np.random.Generator,
    base_scale: float = 1.0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """A real training crop: ``aug.mosaic`` x ``aug.mosaic`` augmented crops side by side.

    Each cell is :func:`augment_sample` of ``crop_px / aug.mosaic`` px; the top-left cell
    comes from ``images[index]``, the others from images drawn with ``rng``. With
    ``aug.mosaic`` 1 this is ``augment_sample(images[index], ...)`` (one cell, no draw).
    """
    n = aug.mosaic
    if crop_px % n:
        raise ValueError(f"crop_px: expected a multiple of mosaic {n}, got {crop_px}")
    cell_px = crop_px // n
    img = np.empty((crop_px, crop_px), np.float32)
    msk = np.empty((crop_px, crop_px), np.float32)
    for k in range(n * n):
        source = index if k == 0 else int(rng.integers(len(images)))
        r, c = divmod(k, n)
        cell = np.s_[r * cell_px : (r + 1) * cell_px, c * cell_px : (c + 1) * cell_px]
        img[cell], msk[cell] = augment_sample(images[source], masks[source], cell_px, aug, rng, base_scale)
    return img, msk


def random_d4(
    image: npt.NDArray[np.float32], mask: npt.NDArray[np.float32], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The same random element of D4 (h-flip, v-flip, transpose; each with p 0.5) applied
    to an image and its mask (views, not copies)."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1, :], mask[::-1, :]
    if rng.random() < 0.5:
        image, mask = image.T, mask.T
    return image, mask


class TrainCrops(torch.utils.data.Dataset):
    """Augmented square training crops of a :class:`SirstSplit`.

    Indexed by ``(index, seed)`` pairs from :class:`EpochSampler`, so every crop is a
    pure function of the image and the seed (reproducible with any number of workers).
    Items are ``(image01, mask01)``, float32 tensors of shape (1, crop_px, crop_px).

    A crop is synthetic with ``synthetic.spec.p_synthetic``; otherwise, with
    ``p_hard_negative`` and a ``hard_negatives`` pool, it is one crop (whatever
    ``aug.mosaic``) of an image drawn from the pool, holding one of its hard negatives;
    otherwise it is :func:`mosaic_sample` of the indexed image.
    """

    def __init__(
        self, split: SirstSplit, crop_px: int, aug: Augment, base_scale: float = 1.0,
        synthetic: SyntheticSource | None = None, hard_negatives: HardNegativePool | None = None,
        p_hard_negative: float = 0.0,
    ) -> None:
        if not 0.0 <= p_hard_negative <= 1.0 or (p_hard_negative > 0 and hard_negatives is None):
            raise ValueError(f"p_hard_negative: expected a probability in [0, 1], and a pool when above 0, "
                             f"got {p_hard_negative} with pool {hard_negatives!r}")
        self.images = split.images
        self.masks = split.masks
        self.crop_px = crop_px
        self.aug = aug
        self.base_scale = base_scale
        self.synthetic = synthetic
        self.hard_negatives = hard_negatives
        self.p_hard_negative = p_hard_negative

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        rng = np.random.default_rng(seed)
        if self.synthetic is not None and rng.random() < self.synthetic.spec.p_synthetic:
            img, msk = self.synthetic.sample(self.crop_px, rng, self.base_scale * _draw_scale(self.aug, rng))
            return torch.from_numpy(img)[None], torch.from_numpy(msk)[None]
        if self.hard_negatives is not None and self.p_hard_negative > 0 and rng.random() < self.p_hard_negative:
            index, focus = self.hard_negatives.draw(rng)
            img, msk = augment_sample(self.images[index], self.masks[index], self.crop_px, self.aug, rng,
                                      self.base_scale, focus_rc=focus)
            return torch.from_numpy(img)[None], torch.from_numpy(msk)[None]
        img, msk = mosaic_sample(self.images, self.masks, index, self.crop_px, self.aug, rng, self.base_scale)
        return torch.from_numpy(img)[None], torch.from_numpy(msk)[None]


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(index, seed)``: a fresh permutation per epoch, ``repeats`` passes per epoch.

    Everything is derived from ``(seed, epoch)``, so a resumed run draws the same crops
    as an uninterrupted one. Call :meth:`set_epoch` before iterating.

    Data-parallel training (``world`` processes, ``rank`` this one): the epoch's items are
    cut into global batches of ``batch_size`` (a trailing partial batch is dropped) and
    each process gets its ``batch_size / world`` consecutive items of every batch, so that
    the processes together see at each step the crops one process would.
    """

    def __init__(
        self, n: int, *, seed: int, repeats: int = 1, rank: int = 0, world: int = 1, batch_size: int | None = None
    ) -> None:
        if world > 1 and (batch_size is None or batch_size % world):
            raise ValueError(f"EpochSampler batch_size: expected a multiple of the {world} processes, got {batch_size}")
        self.n = n
        self.seed = seed
        self.repeats = repeats
        self.rank = rank
        self.world = world
        self.batch_size = batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and seeds are drawn next."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.world == 1:
            return self.n * self.repeats
        return (self.n * self.repeats // self.batch_size) * (self.batch_size // self.world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = np.concatenate([rng.permutation(self.n) for _ in range(self.repeats)])
        seeds = rng.integers(0, 2**62, size=len(order))
        items = list(zip(order.tolist(), seeds.tolist(), strict=True))
        if self.world == 1:
            return iter(items)
        share = self.batch_size // self.world
        steps = len(items) // self.batch_size
        mine = [
            items[step * self.batch_size + self.rank * share + k] for step in range(steps) for k in range(share)
        ]
        return iter(mine)


def split_summary(split: SirstSplit) -> dict[str, int]:
    """Counts for logs and model cards: images, pixels, target pixels."""
    return {
        "images": len(split),
        "pixels": int(sum(m.size for m in split.masks)),
        "target_pixels": int(sum(int(m.sum()) for m in split.masks)),
    }

