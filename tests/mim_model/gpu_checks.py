"""Whole-model GPU checks, shared by the `gpu`-marked tests and scripts/gpu_check_model.py.

Each function returns a dict of measured numbers; the tests assert on them, the script
prints them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mim_model import MiM
from mim_model.weights import DEFAULT_WEIGHTS_PATH, load_model

from .golden import formula_state_dict, golden_input, golden_logits

REPO = Path(__file__).resolve().parents[2]


def sirst_dir() -> Path | None:
    """SIRST data: $IRSCAN_SIRST_DIR, ../shared/data/sirst, or .gpu/sirst (GPU machine)."""
    for candidate in (os.environ.get("IRSCAN_SIRST_DIR"), REPO.parent / "shared/data/sirst", REPO / ".gpu/sirst"):
        if candidate and (Path(candidate) / "images").is_dir():
            return Path(candidate)
    return None


@contextmanager
def scan_backend(name: str):
    old = os.environ.get("IRSCAN_SCAN_BACKEND")
    os.environ["IRSCAN_SCAN_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("IRSCAN_SCAN_BACKEND", None)
        else:
            os.environ["IRSCAN_SCAN_BACKEND"] = old


@contextmanager
def strict_fp32():
    """Plain fp32 matmuls and convolutions: PyTorch lets cuDNN use TF32 (10-bit mantissa)
    for convolutions by default, which alone moves MiM's logits by ~1e-3 relative."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def golden_on_gpu(backend: str = "cuda") -> dict[str, float]:
    """Relative L2 error against the official network's golden logits, model on the GPU (fp32)."""
    model = MiM(keep_relative_pos=True).eval()
    model.load_state_dict(formula_state_dict(), strict=True)
    model = model.cuda()
    out = {}
    with scan_backend(backend), torch.no_grad(), strict_fp32():
        for side in (64, 128, 192):
            logits = model(golden_input(side).cuda())[0, 0].cpu().numpy()
            ref = golden_logits(side)
            out[f"rel_l2_{side}"] = float(np.linalg.norm(logits - ref) / np.linalg.norm(ref))
    return out


def cuda_vs_reference_model(side_px: int = 256, seed: int = 0) -> dict[str, float | str]:
    """The same random-init spatial model (eval mode: batch-norm with fixed statistics),
    fp32: logits and the gradient of every parameter with mamba_ssm's CUDA scan on the GPU,
    against (a) our reference scan on the CPU (the whole model) and (b) our chunked scan on
    the same GPU (the scan alone: same convolution algorithms on both sides).

    Gradient errors: ``grad_rel_l2_all`` over all parameters as one vector; per parameter,
    the median and the maximum over parameters whose gradient norm is at least 1e-3 of the
    largest (below that a parameter's gradient is rounding noise, e.g. a convolution bias
    followed by batch-norm, whose exact gradient is zero in training mode).
    """
    torch.manual_seed(seed)
    model = MiM(layout="spatial").eval()
    x = torch.randn(2, 1, side_px, side_px)

    def run(device: str, backend: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = model.to(device)
        m.zero_grad(set_to_none=True)
        with scan_backend(backend), strict_fp32():
            logits = m(x.to(device))
            logits.float().pow(2).mean().backward()
        grads = {n: p.grad.detach().cpu().double().clone() for n, p in m.named_parameters() if p.grad is not None}
        return logits.detach().cpu().double(), grads

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm().clamp_min(1e-300))

    def compare(prefix: str, got: tuple, ref: tuple) -> dict[str, float | str]:
        (got_logits, got_grads), (ref_logits, ref_grads) = got, ref
        largest = max(float(g.norm()) for g in ref_grads.values())
        per = {n: rel(got_grads[n], g) for n, g in ref_grads.items() if float(g.norm()) >= 1e-3 * largest}
        worst = max(per, key=per.get)
        flat = lambda grads: torch.cat([grads[n].flatten() for n in sorted(ref_grads)])  # noqa: E731
        return {
            f"{prefix}logits_rel_l2": rel(got_logits, ref_logits),
            f"{prefix}grad_rel_l2_all": rel(flat(got_grads), flat(ref_grads)),
            f"{prefix}grad_rel_l2_median": float(np.median(list(per.values()))),
            f"{prefix}grad_rel_l2_max": per[worst],
            f"{prefix}grad_rel_l2_max_param": worst,
            f"{prefix}params_compared": len(per),
        }

    cuda = run("cuda", "cuda")
    return {**compare("", cuda, run("cpu", "ref")), **compare("vs_gpu_chunked_", cuda, run("cuda", "chunked"))}


def _load_grey(path: Path, side_px: int) -> torch.Tensor:
    image = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    padded = np.zeros((side_px, side_px), np.float32)
    h, w = min(image.shape[0], side_px), min(image.shape[1], side_px)
    padded[:h, :w] = image[:h, :w]
    return torch.from_numpy(padded)[None]


def bf16_vs_fp32_on_sirst(count: int = 16, side_px: int = 512) -> dict[str, float]:
    """bf16 autocast (scan in fp32) against fp32 on real SIRST test images, with the
    packaged weights when present (random init otherwise)."""
    data = sirst_dir()
    if data is None:
        raise FileNotFoundError("SIRST data not found (set IRSCAN_SIRST_DIR)")
    names = (data / "idx_427/test.txt").read_text().split()[:count]
    trained = DEFAULT_WEIGHTS_PATH.is_file()
    model = load_model(device="cuda") if trained else MiM(layout="spatial").eval().cuda()
    mean = torch.tensor([0.485, 0.456, 0.406], device="cuda")[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], device="cuda")[:, None, None]
    x = torch.stack([_load_grey(data / "images" / f"{n}.png", side_px) for n in names]).cuda()
    x = (x.expand(-1, 3, -1, -1) - mean) / std
    with torch.no_grad():
        fp32 = model(x).float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(x).float()
    p32, p16 = fp32.sigmoid(), bf16.sigmoid()
    m32, m16 = p32 > 0.5, p16 > 0.5
    union = (m32 | m16).sum().item()
    return {
        "images": len(names),
        "trained_weights": trained,
        "logits_rel_l2": float((bf16 - fp32).norm() / fp32.norm()),
        "prob_max_abs_diff": float((p16 - p32).abs().max()),
        "mask_agreement_iou": float((m32 & m16).sum().item() / union) if union else 1.0,
        "mask_pixels_fp32": int(m32.sum().item()),
    }
