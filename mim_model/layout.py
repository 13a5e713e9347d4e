"""Token <-> image conversions, for the two token layouts of MiM-ISTD.

MiM keeps two token sets: *outer* tokens (B, N, C), one per "visual sentence" on an
Hs x Ws grid (row-major), and *inner* tokens (B*N, 16, c), the 4x4 "visual words" of each
sentence (word index = 4*row + col). SS2D and the feed-forward blocks work on images, so the
tokens must be laid out as images and back.

``official``: the released code uses raw reshapes that do not permute back (spec section
2.5). SS2D reads (B, N, C) tokens transposed to (B, C, N) and then *viewed* as a
(B, h, w, C) image; the feed-forward blocks *view* the token buffer as (B, C, S, S). The
token positions get scrambled, but this is what the authors' checkpoint was trained with.

``spatial``: each token goes to its true 2-D position (the paper's intent): sentence (i, j)
to pixel (i, j); word (r, c) of sentence (i, j) to pixel (4i + r, 4j + c) of the word image.
"""

from __future__ import annotations

import torch

from mim_model.config import Layout

__all__ = [
    "tokens_to_scan_image",
    "scan_image_to_tokens",
    "outer_tokens_to_image",
    "outer_image_to_tokens",
    "inner_tokens_to_image",
    "inner_image_to_tokens",
]

WORDS_PER_SIDE = 4


def tokens_to_scan_image(tokens: torch.Tensor, h: int, w: int, layout: Layout) -> torch.Tensor:
    """(B, h*w, C) tokens -> (B, h, w, C) channels-last image for SS2D."""
    batch, _, channels = tokens.shape
    if layout == "official":
        return tokens.transpose(1, 2).reshape(batch, h, w, channels)
    return tokens.reshape(batch, h, w, channels)


def scan_image_to_tokens(image: torch.Tensor) -> torch.Tensor:
    """(B, h, w, C) -> (B, h*w, C). The same in both layouts (the official code does not
    undo its transpose here)."""
    batch, h, w, channels = image.shape
    return image.reshape(batch, h * w, channels)


def outer_tokens_to_image(tokens: torch.Tensor, hs: int, ws: int, layout: Layout) -> torch.Tensor:
    """(B, Hs*Ws, C) sentence tokens -> (B, C, Hs, Ws) image for the feed-forward block."""
    batch, _, channels = tokens.shape
    if layout == "official":
        return tokens.reshape(batch, channels, hs, ws)
    return tokens.transpose(1, 2).reshape(batch, channels, hs, ws)


def outer_image_to_tokens(image: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Inverse of :func:`outer_tokens_to_image`."""
    batch, channels, hs, ws = image.shape
    if layout == "official":
        return image.reshape(batch, hs * ws, channels)
    return image.flatten(2).transpose(1, 2)


def inner_tokens_to_image(
    tokens: torch.Tensor, batch: int, hs: int, ws: int, layout: Layout
) -> torch.Tensor:
    """(B*Hs*Ws, 16, c) word tokens -> (B, c, 4*Hs, 4*Ws) word image."""
    channels = tokens.shape[-1]
    k = WORDS_PER_SIDE
    if layout == "official":
        return tokens.reshape(batch, channels, k * hs, k * ws)
    words = tokens.reshape(batch, hs, ws, k, k, channels)
    return words.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, k * hs, k * ws)


def inner_image_to_tokens(image: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Inverse of :func:`inner_tokens_to_image`."""
    batch, channels, height, width = image.shape
    k = WORDS_PER_SIDE
    hs, ws = height // k, width // k
    if layout == "official":
        return image.reshape(batch * hs * ws, k * k, channels)
    words = image.reshape(batch, channels, hs, k, ws, k).permute(0, 2, 4, 3, 5, 1)
    return words.reshape(batch * hs * ws, k * k, channels)
