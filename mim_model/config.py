"""Frozen configuration of the MiM-ISTD network."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Layout = Literal["official", "spatial"]

__all__ = ["Layout", "MiMConfig"]


@dataclass(frozen=True)
class MiMConfig:
    """Hyper-parameters of MiM-ISTD.

    The defaults are the official TGRS configuration (spec section 2): four stages of two
    blocks, outer (sentence) dims 32..256, inner (word) dims 4..32, 16 words per sentence.

    ``layout`` chooses how token buffers become images inside SS2D and the feed-forward
    blocks: ``"official"`` reproduces the raw reshapes of the released code (needed to
    match its checkpoint), ``"spatial"`` keeps tokens in their true 2-D positions (what the
    paper describes). Both have the same parameters.

    ``drop_path_rate`` is stochastic depth for training (Huang et al. 2016), as the official
    encoder's ``drop_path_rate`` (0 in the released model): block ``i`` of the ``n`` of all
    stages drops its residual branches for a share ``rate * i / (n - 1)`` of the images of a
    training batch (0 for the first block, ``rate`` for the last).
    It has no parameters and does nothing in eval mode, so weights files store 0.
    """

    in_chans: int = 3
    outer_dims: tuple[int, ...] = (32, 64, 128, 256)
    inner_dims: tuple[int, ...] = (4, 8, 16, 32)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    d_state: int = 16
    ssm_ratio: int = 2
    ffn_ratio: int = 2
    layout: Layout = "official"
    keep_relative_pos: bool = False
    drop_path_rate: float = 0.0
    relative_pos_shapes: tuple[tuple[int, ...], ...] = field(
        default=((1, 2, 4096, 256), (1, 4, 1024, 256), (1, 8, 256, 256), (1, 16, 64, 64))
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate: expected a rate in [0, 1), got {self.drop_path_rate!r}")
        if self.layout not in ("official", "spatial"):
            raise ValueError(f"layout: expected 'official' or 'spatial', got {self.layout!r}")
        n = len(self.outer_dims)
        if not (len(self.inner_dims) == len(self.depths) == n == 4):
            raise ValueError(
                "outer_dims, inner_dims and depths: expected 4 stages each, got "
                f"{len(self.outer_dims)}, {len(self.inner_dims)}, {len(self.depths)}"
            )

    @property
    def side_multiple_px(self) -> int:
        """Input sides must be a multiple of this (the deepest sentence covers 64 px)."""
        return 64
