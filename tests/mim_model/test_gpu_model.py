"""Whole-model checks on a CUDA GPU with mamba_ssm's selective scan (marker `gpu`)."""

from __future__ import annotations

import pytest
import torch

from mim_model.ops import scan_backends

from . import gpu_checks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    pytest.mark.skipif(
        not scan_backends()["cuda"].available, reason="mamba_ssm CUDA scan not importable"
    ),
]


def test_golden_logits_with_the_cuda_scan():
    errors = gpu_checks.golden_on_gpu("cuda")
    assert all(v < 1e-4 for v in errors.values()), errors


def test_cuda_model_matches_reference_outputs_and_gradients():
    result = gpu_checks.cuda_vs_reference_model()
    for prefix in ("", "vs_gpu_chunked_"):  # whole model vs the CPU reference; the scan alone
        assert result[f"{prefix}logits_rel_l2"] < 1e-4, result
        assert result[f"{prefix}grad_rel_l2_all"] < 1e-3, result
        assert result[f"{prefix}grad_rel_l2_median"] < 1e-3, result


@pytest.mark.skipif(gpu_checks.sirst_dir() is None, reason="SIRST data not available")
def test_bf16_autocast_matches_fp32_on_real_images():
    result = gpu_checks.bf16_vs_fp32_on_sirst()
    assert result["logits_rel_l2"] < 0.05, result
    if result["mask_pixels_fp32"] > 0:
        assert result["mask_agreement_iou"] > 0.9, result


def test_windowed_inference_on_cuda_matches_the_cpu():
    """The window gather and scatter on the GPU (indexing, groups, the cuda scan) give the
    CPU's probabilities: packaged weights, fp32 on both, a 512 px input in 128 px windows."""
    from mim_model.training.inference import model_probabilities, windowed
    from mim_model.weights import load_model

    x = torch.rand(2, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    results = []
    for device in ("cpu", "cuda"):
        model = load_model(None, device=torch.device(device))
        with gpu_checks.strict_fp32(), torch.inference_mode():
            probs = windowed(lambda y, m=model, d=device: model_probabilities(m, y, torch.device(d), False),
                             x.to(device), 128, 32, 64)
        results.append(probs.cpu())
    cpu, cuda = results
    assert cpu[:, :, 32:-32, 32:-32].std() > 0
    assert torch.allclose(cuda, cpu, atol=1e-3), (cuda - cpu).abs().max()
