"""CUDA checks of the invariant-set step (run with ``make test-gpu``)."""

from __future__ import annotations

import pytest
import torch
from _invariant_helpers import TinyClassifier

from lightning_fv.diffusion import LatentDiffusionPipeline, ResizeAutoencoder, lightningdit
from lightning_fv.diffusion.invariant import invariant_loss, invariant_set_sample, logits_response

pytestmark = pytest.mark.gpu


def _pipe() -> LatentDiffusionPipeline:
    torch.manual_seed(0)
    dit = lightningdit("LightningDiT-B/2", input_size=16, in_channels=3, num_classes=10)
    return LatentDiffusionPipeline(dit, ResizeAutoencoder(1, 3)).cuda().eval()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_is_flat_in_sampler_steps_with_checkpointing() -> None:
    pipe, clf = _pipe(), TinyClassifier().cuda().eval()
    obj = logits_response(clf)
    peaks = {}
    for steps in (5, 40):
        z = torch.randn(8, 3, 16, 16, device="cuda", requires_grad=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        x = pipe.generate(z, None, checkpoint=True, enable_grad=True, num_steps=steps)
        invariant_loss(obj, x, torch.zeros(8, 3, device="cuda"))[0].sum().backward()
        torch.cuda.synchronize()
        peaks[steps] = torch.cuda.max_memory_allocated() - base
    latent = 8 * 3 * 16 * 16 * 4
    assert peaks[40] - peaks[5] <= 35 * latent * 4 + 2 ** 20  # only the per-step latents grow


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_matches_cpu_run() -> None:
    pipe, clf = _pipe(), TinyClassifier().eval()
    q = torch.rand(1, 3, 16, 16)
    kw = dict(num_samples=2, budget=3, lr=1.0, num_steps=4, tau=0.0)
    cpu = invariant_set_sample(pipe.cpu(), logits_response(clf), q, **kw)
    gpu = invariant_set_sample(pipe.cuda(), logits_response(clf.cuda()), q.cuda(), **kw)
    torch.testing.assert_close(gpu.z_init.cpu(), cpu.z_init)
    torch.testing.assert_close(gpu.images.cpu(), cpu.images, rtol=1e-3, atol=1e-3)
