"""Saving and loading MiM weights.

* irscan's own weights are float16 safetensors with string metadata: the network config
  (``mim_config``, JSON), the decision ``threshold`` on probabilities, the input
  ``normalization`` and provenance. Two ship in ``mim_model/weights/``, each with its model
  card: ``mim_sirst.safetensors``, the default of ``train``, ``evaluate`` and ``predict``
  (chosen on SIRST), and ``mim_scan.safetensors``, the default of ``scan`` (chosen on whole
  scenes, where a target is one bright spot among many).
* A file may also carry an outline refiner (:mod:`mim_model.refiner`) beside the network:
  its tensors are named ``refiner.*`` and its shape is the metadata ``refiner_config``.
  :func:`load_model` leaves those out; :func:`load_refiner` loads them (None when absent).
* The authors' released checkpoint (a ``.pth`` pickle) loads through
  :func:`load_official_checkpoint`, with ``torch.load(weights_only=True)``: no code from
  the file is executed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from mim_model.config import MiMConfig
from mim_model.errors import WeightsError
from mim_model.network import MiM
from mim_model.refiner import OutlineRefiner, RefinerConfig

__all__ = [
    "DEFAULT_WEIGHTS_PATH",
    "DEFAULT_SCAN_WEIGHTS_PATH",
    "save_safetensors",
    "load_safetensors",
    "read_metadata",
    "load_model",
    "load_refiner",
    "load_official_checkpoint",
    "weights_sha256",
    "soup_runs",
]

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "mim_sirst.safetensors"
DEFAULT_SCAN_WEIGHTS_PATH = DEFAULT_WEIGHTS_PATH.with_name("mim_scan.safetensors")
_SKIPPED_SUFFIXES = (".relative_pos",)
#: Tensors of an outline refiner carried in a weights file start with this.
REFINER_PREFIX = "refiner."


def _config_to_json(config: MiMConfig) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def _config_from_json(text: str, source: Path) -> MiMConfig:
    try:
        raw = json.loads(text)
        fields = {f.name for f in dataclasses.fields(MiMConfig)}
        kwargs = {k: (tuple(map(tuple, v)) if k == "relative_pos_shapes" else tuple(v) if isinstance(v, list) else v)
                  for k, v in raw.items() if k in fields}
        return MiMConfig(**kwargs)
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{source}: metadata 'mim_config' is not a valid MiM config ({exc})") from None


def save_safetensors(
    model: MiM, path: str | os.PathLike, *, metadata: dict[str, str] | None = None,
    dtype: torch.dtype = torch.float16, refiner: OutlineRefiner | None = None,
) -> Path:
    """Write ``model``'s weights (floats cast to ``dtype``) and metadata, atomically.

    The unused ``relative_pos`` tensors are left out; ``mim_config`` is added to the metadata.
    With ``refiner``, its tensors go in too (``refiner.*``) and its shape as ``refiner_config``.
    """
    path = Path(path)
    named = [("", model.state_dict())] + ([(REFINER_PREFIX, refiner.state_dict())] if refiner is not None else [])
    tensors = {}
    for prefix, state in named:
        for name, value in state.items():
            if name.endswith(_SKIPPED_SUFFIXES):
                continue
            value = value.detach().cpu()
            tensors[prefix + name] = value.to(dtype).contiguous() if value.is_floating_point() else value.contiguous()
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    # stochastic depth acts in training only: the file describes the network as it infers
    config = dataclasses.replace(model.config, keep_relative_pos=False, drop_path_rate=0.0)
    meta["mim_config"] = _config_to_json(config)
    if refiner is not None:
        meta["refiner_config"] = refiner.config.to_json()
    else:  # metadata copied from a file with a refiner must not describe one that is not there
        meta.pop("refiner_config", None)
        meta.pop("refiner_train", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors weights file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None


def load_safetensors(
    path: str | os.PathLike, *, prefix: str | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(float32 state_dict, metadata) from a safetensors weights file; with ``prefix``, only
    the tensors whose names start with it are read (names kept whole)."""
    path = Path(path)
    metadata = read_metadata(path)
    try:
        if prefix is None:
            tensors = load_file(str(path))
        else:
            with safe_open(str(path), framework="pt") as handle:
                tensors = {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)}
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return state, metadata


def _check_and_load(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path,
    what: str = "weights do not match the MiM network",
) -> None:
    """Load ``state`` into ``model`` strictly, or raise one :class:`WeightsError` that names
    ``source``, ``what`` failed, and the missing, unexpected and misshapen tensors."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} expected {tuple(expected[k].shape)} got {tuple(state[k].shape)}"
        for k in expected
        if k in state and tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} with other shapes (e.g. {'; '.join(mismatched[:3])})")
        raise WeightsError(f"{source}: {what}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_model(
    weights_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
) -> MiM:
    """An eval-mode :class:`MiM` with weights from ``weights_path`` (default: the packaged
    weights). The network config comes from the file's metadata."""
    path = Path(weights_path) if weights_path is not None else DEFAULT_WEIGHTS_PATH
    if weights_path is None and not path.is_file():
        raise WeightsError(f"{path}: the packaged default weights are missing; reinstall irscan")
    state, metadata = load_safetensors(path)
    config = _config_from_json(metadata["mim_config"], path) if "mim_config" in metadata else MiMConfig()
    model = MiM(config)
    _check_and_load(model, {k: v for k, v in state.items() if not k.startswith(REFINER_PREFIX)}, path)
    model.weights_metadata = metadata  # type: ignore[attr-defined]
    return model.to(device).eval()


def load_refiner(
    weights_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
) -> OutlineRefiner | None:
    """The eval-mode outline refiner carried in ``weights_path`` (default: the packaged
    weights), or None when the file carries none."""
    path = Path(weights_path) if weights_path is not None else DEFAULT_WEIGHTS_PATH
    if "refiner_config" not in read_metadata(path):  # the header only: most files carry none
        return None
    state, metadata = load_safetensors(path, prefix=REFINER_PREFIX)
    try:
        refiner = OutlineRefiner(RefinerConfig.from_json(metadata["refiner_config"]))
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: metadata 'refiner_config' is not a valid refiner config ({exc})") from None
    own = {k[len(REFINER_PREFIX):]: v for k, v in state.items()}
    _check_and_load(refiner, own, path, what="refiner tensors do not match its 'refiner_config'")
    return refiner.to(device).eval()


def load_official_checkpoint(
    path: str | os.PathLike, *, layout: str = "official", device: str | torch.device = "cpu"
) -> MiM:
    """Load the authors' released ``.pth`` into an eval-mode :class:`MiM`.

    Accepts a plain state_dict or one wrapped in ``state_dict``/``model``, with or without
    ``module.`` prefixes (DataParallel). The four unused ``relative_pos`` tensors are kept
    when present, so the load is strict. Raises :class:`WeightsError` naming what differs.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, OSError) as exc:
        raise WeightsError(f"{path}: cannot be read as a weights-only PyTorch checkpoint ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state_dict of tensors, got {type(obj).__name__}")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    keep_rel = any(k.endswith(_SKIPPED_SUFFIXES) for k in state)
    model = MiM(layout=layout, keep_relative_pos=keep_rel)
    _check_and_load(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, path)
    return model.to(device).eval()


def weights_sha256(path: str | os.PathLike | None = None) -> str:
    """Hex sha256 of a weights file (default: the packaged weights)."""
    digest = hashlib.sha256()
    with open(path or DEFAULT_WEIGHTS_PATH, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def soup_runs(metadata: dict[str, str]) -> list[tuple[dict, float]]:
    """The trained runs behind weights, each with its share of the element-wise mean.

    A weight soup's metadata lists its inputs under ``soup_members`` (JSON); an input that
    was itself a soup carries its own ``soup_members`` there, so a soup of soups resolves to
    the runs it averages. Weights that are not a soup are one run with share 1.

    Returns
    -------
    list of (dict, float)
        Each run's member entry (``file``, ``sha256``, ``epoch``, ``train_config``, ...) and
        its share, in order of first appearance; a run that enters by several paths (the
        same sha256) is listed once with the sum of its shares. The shares sum to 1.
    """
    if "soup_members" not in metadata:
        return [({"train_config": json.loads(metadata.get("train_config", "{}"))}, 1.0)]
    entries: dict[str, dict] = {}
    shares: dict[str, float] = {}
    for member, share in _member_runs(json.loads(metadata["soup_members"]), 1.0):
        key = member.get("sha256") or f"#{len(entries)}"
        entries.setdefault(key, member)
        shares[key] = shares.get(key, 0.0) + share
    return [(entries[key], shares[key]) for key in entries]


def _member_runs(members: list[dict], share: float) -> list[tuple[dict, float]]:
    runs: list[tuple[dict, float]] = []
    for member in members:
        if "soup_members" in member:
            runs += _member_runs(member["soup_members"], share / len(members))
        else:
            runs.append((member, share / len(members)))
    return runs
