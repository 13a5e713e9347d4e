"""Selective-scan operators: reference vs a naive loop, chunked vs reference, dispatcher, GPU parity.

The GPU tests (marker ``gpu``) compare mamba_ssm's CUDA kernel, and the chunked scan on CUDA
tensors, with the reference on MiM-ISTD's exact scan shapes at 512x512.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mim_model.errors import InputShapeError, ScanBackendUnavailableError
from mim_model.ops import (
    BACKENDS,
    ENV_VAR,
    resolve_backend,
    scan_backends,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)
from mim_model.ops import selective_scan_cuda as cuda_mod
from mim_model.ops._linear_scan import linear_scan

N_STATE = 16
GROUPS = 4


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def make_bc(
    mode: str, batch: int, dim: int, n: int, length: int, g: torch.Generator
) -> torch.Tensor:
    """B or C as 'fixed' (dim, N), 'var' (batch, N, L) or 'grouped' (batch, 2, N, L)."""
    if mode == "fixed":
        return torch.randn(dim, n, generator=g)
    if mode == "var":
        return torch.randn(batch, n, length, generator=g)
    return torch.randn(batch, 2, n, length, generator=g)


def mim_inputs(
    batch: int, dim: int, length: int, seed: int = 0, delta_scale: float = 0.5, a_max: float = 16.0
) -> dict[str, Any]:
    """MiM-like arguments: grouped B/C (4 groups), delta_bias, softplus, D, z None."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    a_log = torch.log(torch.linspace(1.0, a_max, N_STATE)).expand(dim, N_STATE)
    return dict(
        u=torch.randn(batch, dim, length, generator=g),
        delta=delta_scale * torch.randn(batch, dim, length, generator=g),
        A=-torch.exp(a_log + 0.1 * torch.randn(dim, N_STATE, generator=g)),
        B=torch.randn(batch, GROUPS, N_STATE, length, generator=g),
        C=torch.randn(batch, GROUPS, N_STATE, length, generator=g),
        D=torch.randn(dim, generator=g),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
        delta_softplus=True,
    )


def naive_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element float64 loops over (batch, channel, time, state), straight from the formula."""
    batch, dim, length = u.shape
    n_state = A.shape[1]
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    y = torch.zeros(batch, dim, length, dtype=torch.float64)
    last = torch.zeros(batch, dim, n_state, dtype=torch.float64)

    def coeff(m: torch.Tensor, b: int, d: int, n: int, t: int) -> float:
        if m.dim() == 2:
            return float(m[d, n])
        if m.dim() == 3:
            return float(m[b, n, t])
        group = d // (dim // m.shape[1])
        return float(m[b, group, n, t])

    for b in range(batch):
        for d in range(dim):
            h = [0.0] * n_state
            for t in range(length):
                dt = float(delta[b, d, t]) + (float(delta_bias[d]) if delta_bias is not None else 0.0)
                if delta_softplus:
                    dt = math.log1p(math.exp(dt)) if dt <= 20.0 else dt
                acc = 0.0
                for n in range(n_state):
                    decay = math.exp(dt * float(A[d, n]))
                    h[n] = decay * h[n] + dt * coeff(B, b, d, n, t) * float(u[b, d, t])
                    acc += coeff(C, b, d, n, t) * h[n]
                if D is not None:
                    acc += float(D[d]) * float(u[b, d, t])
                if z is not None:
                    zz = float(z[b, d, t])
                    acc *= zz / (1.0 + math.exp(-zz))
                y[b, d, t] = acc
            last[b, d] = torch.tensor(h, dtype=torch.float64)
    return y, last


# ---------------------------------------------------------------- reference vs naive loop

@pytest.mark.parametrize("b_mode", ["fixed", "var", "grouped"])
@pytest.mark.parametrize("c_mode", ["fixed", "var", "grouped"])
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "D-z-bias-softplus"])
def test_reference_matches_naive_loop(b_mode: str, c_mode: str, extras: bool) -> None:
    g = torch.Generator().manual_seed(1)
    batch, dim, length, n = 2, 4, 5, 3
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.rand(batch, dim, length, generator=g)
    A = -torch.rand(dim, n, generator=g) * 3
    B = make_bc(b_mode, batch, dim, n, length, g)
    C = make_bc(c_mode, batch, dim, n, length, g)
    kw: dict[str, Any] = {}
    if extras:
        kw = dict(
            D=torch.randn(dim, generator=g),
            z=torch.randn(batch, dim, length, generator=g),
            delta_bias=torch.randn(dim, generator=g),
            delta_softplus=True,
        )
    y, last = selective_scan_ref(u, delta, A, B, C, return_last_state=True, **kw)
    y_naive, last_naive = naive_scan(
        u, delta, A, B, C, kw.get("D"), kw.get("z"), kw.get("delta_bias"), kw.get("delta_softplus", False)
    )
    err_y, err_h = rel_l2(y, y_naive), rel_l2(last, last_naive)
    message = f"ref vs naive: y rel L2 {err_y:.2e}, last state {err_h:.2e}"
    assert err_y < 1e-6, message
    assert err_h < 1e-6, message


# ---------------------------------------------------------------- linear scan kernel

@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 16, 17, 33])
def test_linear_scan_matches_sequential(length: int) -> None:
    g = torch.Generator().manual_seed(length)
    a = torch.rand(3, length, 4, generator=g, dtype=torch.float64)
    x = torch.randn(3, length, 4, generator=g, dtype=torch.float64)
    h0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    h = linear_scan(a, x, h0, dim=1)
    state, expected = h0, []
    for t in range(length):
        state = a[:, t] * state + x[:, t]
        expected.append(state)
    assert torch.allclose(h, torch.stack(expected, dim=1), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- chunked vs reference

@pytest.mark.parametrize("b_mode", ["fixed", "var", "grouped"])
@pytest.mark.parametrize("c_mode", ["fixed", "var", "grouped"])
def test_chunked_matches_reference_all_layouts(b_mode: str, c_mode: str) -> None:
    g = torch.Generator().manual_seed(2)
    batch, dim, length, n = 3, 8, 37, 5
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.rand(batch, dim, length, generator=g)
    A = -torch.rand(dim, n, generator=g) * 4
    B = make_bc(b_mode, batch, dim, n, length, g)
    C = make_bc(c_mode, batch, dim, n, length, g)
    kw = dict(
        D=torch.randn(dim, generator=g),
        z=torch.randn(batch, dim, length, generator=g),
        delta_bias=torch.randn(dim, generator=g),
        delta_softplus=True,
        return_last_state=True,
    )
    y_ref, h_ref = selective_scan_ref(u, delta, A, B, C, **kw)
    # Tiny blocks force several batch, channel and chunk blocks, remainders and carries.
    for block_elems, chunk_len in [(1 << 20, 64), (100, 3), (64, 4)]:
        y, h = selective_scan_chunked(u, delta, A, B, C, **kw, block_elems=block_elems, chunk_len=chunk_len)
        err_y, err_h = rel_l2(y, y_ref), rel_l2(h, h_ref)
        message = f"blocks {block_elems}/{chunk_len}: y rel L2 {err_y:.2e}, last state {err_h:.2e}"
        assert err_y < 1e-6, message
        assert err_h < 1e-6, message


@pytest.mark.parametrize(
    ("batch", "dim", "length"),
    [
        (1, 16, 4096),  # long sequence, few channels (outer stage 1 has L = 4096)
        (1, 256, 256),  # outer stage 3 shape with fewer channels
        (512, 32, 16),  # inner stages: many 16-word sentences
        (64, 256, 16),  # inner stage 4 at 512^2
    ],
)
def test_chunked_matches_reference_mim_shapes(batch: int, dim: int, length: int) -> None:
    x = mim_inputs(batch, dim, length, seed=3)
    y_ref = selective_scan_ref(**x)
    y = selective_scan_chunked(**x)
    err = rel_l2(y, y_ref)
    assert err < 1e-5, f"chunked vs ref on (batch {batch}, dim {dim}, L {length}): rel L2 {err:.2e}"


@pytest.mark.parametrize(("delta_scale", "a_max"), [(8.0, 100.0), (40.0, 100.0), (0.01, 1.0)])
def test_chunked_adversarial_decays(delta_scale: float, a_max: float) -> None:
    """Huge delta with A down to -100 (decays underflow to 0) and near-1 decays stay finite."""
    x = mim_inputs(2, 16, 300, seed=4, delta_scale=delta_scale, a_max=a_max)
    x["A"] = -torch.linspace(0.5, a_max, N_STATE).expand(16, N_STATE).contiguous()
    y_ref, h_ref = selective_scan_ref(**x, return_last_state=True)
    y, h = selective_scan_chunked(**x, return_last_state=True, block_elems=4096, chunk_len=16)
    assert torch.isfinite(y).all()
    assert torch.isfinite(h).all()
    err_y, err_h = rel_l2(y, y_ref), rel_l2(h, h_ref)
    assert err_y < 1e-5, f"y rel L2 {err_y:.2e}, last state {err_h:.2e}"
    assert err_h < 1e-5, f"y rel L2 {err_y:.2e}, last state {err_h:.2e}"


def test_chunked_keeps_inputs_and_dtypes() -> None:
    x = mim_inputs(2, 8, 20, seed=5)
    x["B"] = x["B"].transpose(2, 3).contiguous().transpose(2, 3)  # (b, G, L, N) storage, as a view
    before = {k: v.clone() for k, v in x.items() if isinstance(v, torch.Tensor)}
    y = selective_scan_chunked(**x)
    for k, v in before.items():
        assert torch.equal(x[k], v), f"{k} was modified in place"
    assert rel_l2(y, selective_scan_ref(**x)) < 1e-6
    x16 = {k: (v.bfloat16() if k in ("u", "delta") else v) for k, v in x.items()}
    y16 = selective_scan_chunked(**x16)
    assert y16.dtype == torch.bfloat16
    assert rel_l2(y16, selective_scan_ref(**x16)) < 1e-2


def test_chunked_rejects_bad_shapes() -> None:
    x = mim_inputs(2, 8, 20)
    with pytest.raises(InputShapeError, match="B must be"):
        selective_scan_chunked(**{**x, "B": torch.randn(2, 3, N_STATE, 20)})  # 3 groups do not divide 8
    with pytest.raises(InputShapeError, match="delta must be"):
        selective_scan_chunked(**{**x, "delta": torch.randn(2, 8, 19)})


# ---------------------------------------------------------------- gradients

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias", "z")


def _grads(
    fn: Callable[..., torch.Tensor], x: dict[str, Any], weight: torch.Tensor, **kw: int
) -> dict[str, torch.Tensor]:
    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items() if k in GRAD_NAMES}
    out = fn(**{**x, **leaves}, **kw)
    (out * weight).sum().backward()
    return {k: v.grad for k, v in leaves.items()}


def test_chunked_gradients_match_reference() -> None:
    x = mim_inputs(2, 16, 45, seed=6)
    x["z"] = torch.randn(2, 16, 45)
    weight = torch.randn(2, 16, 45)
    ref = _grads(selective_scan_ref, x, weight)
    for block_elems, chunk_len in [(1 << 20, 64), (512, 8)]:
        fast = _grads(selective_scan_chunked, x, weight, block_elems=block_elems, chunk_len=chunk_len)
        errors = {k: rel_l2(fast[k], ref[k]) for k in ref}
        assert max(errors.values()) < 1e-5, f"gradient rel L2 vs ref ({block_elems}/{chunk_len}): {errors}"


def test_chunked_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(7)
    batch, dim, length, n = 1, 4, 7, 3
    tensors = (
        torch.randn(batch, dim, length, generator=g),  # u
        0.5 * torch.randn(batch, dim, length, generator=g),  # delta
        -torch.rand(dim, n, generator=g) - 0.2,  # A
        torch.randn(batch, 2, n, length, generator=g),  # B (2 groups)
        torch.randn(batch, n, length, generator=g),  # C (1 group)
        torch.randn(dim, generator=g),  # D
        torch.randn(batch, dim, length, generator=g),  # z
        0.3 * torch.randn(dim, generator=g),  # delta_bias
    )
    inputs = tuple(t.double().requires_grad_() for t in tensors)

    def fn(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return selective_scan_chunked(
            *args, delta_softplus=True, return_last_state=True, block_elems=24, chunk_len=3
        )

    assert torch.autograd.gradcheck(fn, inputs)


def test_chunked_trains_a_parameter() -> None:
    """A few optimiser steps through the chunked scan reduce a loss (CPU training path)."""
    x = mim_inputs(2, 8, 24, seed=8)
    a_log = torch.nn.Parameter(torch.log(-x.pop("A")))
    opt = torch.optim.SGD([a_log], lr=0.05)
    target = torch.randn(2, 8, 24)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.mse_loss(selective_scan_chunked(**x, A=-torch.exp(a_log)), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------- dispatcher

def _small() -> dict[str, Any]:
    return mim_inputs(2, 8, 12, seed=9)


def test_auto_picks_chunked_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend(None, "cpu") == "chunked"
    assert resolve_backend("auto", torch.device("cpu")) == "chunked"
    x = _small()
    assert torch.equal(selective_scan(**x), selective_scan_chunked(**x))


def test_env_variable_overrides_default(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _small()
    monkeypatch.setenv(ENV_VAR, "ref")
    assert resolve_backend(None, "cpu") == "ref"
    assert torch.equal(selective_scan(**x), selective_scan_ref(**x))
    # An explicit argument wins over the environment.
    assert torch.equal(selective_scan(**x, backend="chunked"), selective_scan_chunked(**x))
    monkeypatch.setenv(ENV_VAR, "fast")  # alias of chunked
    assert resolve_backend(None, "cpu") == "chunked"


@pytest.mark.parametrize("where", ["argument", "environment"])
def test_unknown_backend_is_a_value_error(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    x = _small()
    kw: dict[str, Any] = {}
    if where == "argument":
        kw["backend"] = "triton"
    else:
        monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(ValueError, match="triton") as info:
        selective_scan(**x, **kw)
    message = str(info.value)
    assert ENV_VAR in message
    assert all(name in message for name in BACKENDS)


@pytest.mark.skipif(cuda_mod.cuda_kernel_available(), reason="mamba_ssm's kernel imports here")
def test_cuda_unavailable_error_names_install_command() -> None:
    with pytest.raises(ScanBackendUnavailableError) as info:
        selective_scan(**_small(), backend="cuda")
    message = str(info.value)
    assert "pip install 'irscan[gpu]'" in message
    assert "mamba" in message
    assert type(cuda_mod.cuda_kernel_error()).__name__ in message  # the original import error
    assert isinstance(info.value.__cause__, (ImportError, OSError))
    report = scan_backends()
    assert not report["cuda"].available
    assert "pip install 'irscan[gpu]'" in report["cuda"].detail
    assert report["chunked"].available
    assert report["ref"].available


def test_cuda_backend_rejects_cpu_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_kernel(*args: torch.Tensor | None) -> torch.Tensor:
        raise AssertionError("must not be called with CPU tensors")

    monkeypatch.setattr(cuda_mod, "_probe", lambda: (fake_kernel, None))
    with pytest.raises(ScanBackendUnavailableError, match="needs CUDA tensors"):
        selective_scan(**_small(), backend="cuda")


def test_auto_on_gpu_without_kernel_falls_back_and_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    missing = ImportError("No module named 'selective_scan_cuda'")
    monkeypatch.setattr(cuda_mod, "_probe", lambda: (None, missing))
    with caplog.at_level(logging.WARNING, logger="mim_model.ops.selective_scan"):
        assert resolve_backend("auto", "cuda:7") == "chunked"
    assert "irscan[gpu]" in caplog.text
    monkeypatch.setattr(cuda_mod, "_probe", lambda: (lambda *a: None, None))
    assert resolve_backend("auto", "cuda:0") == "cuda"
    assert resolve_backend("auto", "cpu") == "chunked"


# ---------------------------------------------------------------- GPU parity

def _kernel_missing() -> bool:
    return not torch.cuda.is_available() or not cuda_mod.cuda_kernel_available()


def mim_gpu_shapes() -> list[tuple[str, int, int, int]]:
    """MiM's scans at 512^2, batch 1: (name, batch, dim = 4 * d_inner, L)."""
    outer = [(f"outer{s + 1}", 1, 4 * 64 * 2**s, (64 // 2**s) ** 2) for s in range(4)]
    inner = [(f"inner{s + 1}", (64 // 2**s) ** 2, 4 * 8 * 2**s, 16) for s in range(4)]
    return outer + inner


def _gpu_parity(backend: str, name: str, batch: int, dim: int, length: int) -> None:
    x = mim_inputs(batch, dim, length, seed=11)
    x = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in x.items()}
    weight = torch.randn(batch, dim, length, device="cuda")
    ref = _grads(selective_scan_ref, x, weight)
    def scan(**kw: Any) -> torch.Tensor:  # noqa: ANN401
        return selective_scan(**kw, backend=backend)

    got = _grads(scan, x, weight)
    y_ref = selective_scan_ref(**x)
    y = selective_scan(**x, backend=backend)
    err_y = rel_l2(y, y_ref)
    max_abs = float((y - y_ref).abs().max())
    grad_err = {k: rel_l2(got[k], ref[k]) for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")}
    message = (
        f"{backend} vs ref on {name} (batch {batch}, dim {dim}, L {length}): y rel L2 {err_y:.2e} "
        f"(max abs {max_abs:.2e}), grad rel L2 {grad_err}"
    )
    logging.getLogger(__name__).info(message)
    assert err_y < 1e-4, message
    assert max(grad_err.values()) < 1e-3, message


@pytest.mark.gpu
@pytest.mark.skipif(_kernel_missing(), reason="needs a CUDA GPU and mamba_ssm's selective_scan_cuda kernel")
@pytest.mark.parametrize(("name", "batch", "dim", "length"), mim_gpu_shapes())
def test_cuda_kernel_matches_reference_on_mim_shapes(name: str, batch: int, dim: int, length: int) -> None:
    _gpu_parity("cuda", name, batch, dim, length)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("name", "batch", "dim", "length"), mim_gpu_shapes()[::3])
def test_chunked_on_cuda_matches_reference(name: str, batch: int, dim: int, length: int) -> None:
    _gpu_parity("chunked", name, batch, dim, length)
