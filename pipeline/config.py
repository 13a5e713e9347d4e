"""Frozen configuration of a scan: tiling, normalisation, inference and Ray resources."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import InputError
from pipeline.infer import InferenceSpec
from pipeline.normalize import NormalizationSpec
from pipeline.tiling import TilingSpec

__all__ = ["ScanConfig", "RayOptions"]


@dataclass(frozen=True)
class RayOptions:
    """Where and how the Ray work runs.

    ``address`` None starts a local Ray for the run (unless ``RAY_ADDRESS`` is set, which
    joins that cluster). ``gpus_per_actor`` may be fractional (several actors share a GPU).
    ``num_actors`` None gives one actor per ``gpus_per_actor`` of the cluster's GPUs, or one
    CPU actor when there is no GPU. ``max_tiles_in_flight`` bounds host memory: tiles read but
    not yet written (None: 4 batches per actor).
    """

    address: str | None = None
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 1.0
    num_actors: int | None = None
    read_cpus: float = 0.5
    max_tiles_in_flight: int | None = None
    num_cpus: int | None = None
    dashboard: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.gpus_per_actor <= 8:
            raise InputError(f"gpus_per_actor: expected a number in (0, 8], got {self.gpus_per_actor}")
        if self.cpus_per_actor <= 0:
            raise InputError(f"cpus_per_actor: expected > 0, got {self.cpus_per_actor}")
        if self.num_actors is not None and self.num_actors < 1:
            raise InputError(f"num_actors: expected >= 1, got {self.num_actors}")
        if not 0 < self.read_cpus <= 16:
            raise InputError(f"read_cpus: expected a number in (0, 16], got {self.read_cpus}")
        if self.max_tiles_in_flight is not None and self.max_tiles_in_flight < 1:
            raise InputError(f"max_tiles_in_flight: expected >= 1, got {self.max_tiles_in_flight}")


@dataclass(frozen=True)
class ScanConfig:
    """Everything that decides a scan's outputs (and, in ``ray``, where it runs)."""

    tiling: TilingSpec = field(default_factory=TilingSpec)
    normalization: NormalizationSpec = field(default_factory=NormalizationSpec)
    inference: InferenceSpec = field(default_factory=InferenceSpec)
    ray: RayOptions = field(default_factory=RayOptions)
    band: int = 1
    batch_size: int = 8
    tile_retries: int = 2
    overwrite: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.band < 1:
            raise InputError(f"band: expected a 1-based band index >= 1, got {self.band}")
        if not 1 <= self.batch_size <= 1024:
            raise InputError(f"batch_size: expected 1..1024, got {self.batch_size}")
        if not 0 <= self.tile_retries <= 10:
            raise InputError(f"tile_retries: expected 0..10, got {self.tile_retries}")
        window_px, window_halo_px = self.inference.window_px, self.inference.window_halo_px
        if window_px is not None and window_px > self.tiling.tile_px:
            raise InputError(f"window_px: expected at most tile_px ({self.tiling.tile_px}), got {window_px}")
        if window_px is not None and window_halo_px > self.tiling.halo_px:
            raise InputError(f"window_halo_px: expected at most halo_px ({self.tiling.halo_px}), got {window_halo_px}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def output_fingerprint(self, weights_sha256: str) -> str:
        """Hash of what decides the output bytes (not of where or how fast it runs)."""
        decisive = {
            "tiling": dataclasses.asdict(self.tiling),
            "normalization": dataclasses.asdict(self.normalization),
            "band": self.band,
            "threshold": self.inference.threshold,
            "amp": self.inference.amp,
            "flip_tta": self.inference.flip_tta,
            "weights_sha256": weights_sha256,
        }
        if self.inference.input_scale is not None:  # absent by default: earlier outputs keep their fingerprint
            decisive["input_scale"] = self.inference.input_scale
        if self.inference.window_px is not None:  # likewise
            decisive["window"] = [self.inference.window_px, self.inference.window_halo_px]
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]
