"""GPU code paths of the engine (run with `make test-gpu` on a CUDA machine)."""

from __future__ import annotations

import pytest
import torch

from lightning_fv.models import SmallCNN
from lightning_fv.optvis.render import render_units

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture
def net():
    torch.manual_seed(0)
    return SmallCNN(num_classes=10).cuda().eval()


def test_bf16_autocast_render_is_finite_and_close_to_fp32(net):
    units = [f"block3:{i}" for i in range(8)]
    a = render_units(net, units, thresholds=(16,), image_size=64)
    b = render_units(net, units, thresholds=(16,), image_size=64,
                     autocast_dtype=torch.bfloat16)
    assert torch.isfinite(b.final).all()
    assert (a.final - b.final).abs().mean() < 0.05
    assert (b.values[16] > 0).float().mean() >= 0.5


@pytest.mark.parametrize("option", ["channels_last", "compile"])
def test_gpu_options_match_eager_and_restore_weights(net, option, monkeypatch):
    # compare in true fp32: TF32 convolutions round differently per algorithm, and Adam
    # amplifies that over the steps (the first H100 runs failed with TF32 on)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    units = [f"block2:{i}" for i in range(4)]
    w = net.block1.conv.weight
    a = render_units(net, units, thresholds=(8,), image_size=32)
    b = render_units(net, units, thresholds=(8,), image_size=32, **{option: True})
    # different kernels round differently and Adam amplifies it a little
    assert (a.final - b.final).abs().mean() < 5e-3
    assert torch.allclose(a.values[8], b.values[8], rtol=0.05, atol=1e-3)
    assert net.block1.conv.weight is w and w.is_contiguous()
    assert all(not m._forward_hooks for m in net.modules())


def _peak_bytes(fn) -> tuple[int, object]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, out


def test_memory_probe_sizes_chunks_to_the_budget(net, monkeypatch):
    import lightning_fv.optvis.render as render_module

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    units = [f"block4:{i}" for i in range(32)]
    kw = dict(thresholds=(2,), image_size=64)
    # the memory of one image, measured here apart from the probe: the whole sweep in one
    # batch against one image at a time
    p_all, ref = _peak_bytes(lambda: render_units(net, units, batch_size=None, **kw))
    p_one, _ = _peak_bytes(lambda: render_units(net, units[:1], batch_size=None, **kw))
    per_image = (p_all - p_one) / 31
    assert per_image > 0
    budget = p_one + 6 * per_image  # room for about 6 images per chunk
    batches: list[int] = []
    real_render = render_module.render

    def counting_render(*args, **kwargs):
        if tuple(kwargs.get("thresholds", ())) == (2,):  # the sweep, not the probes
            batches.append(int(kwargs["batch"]))
        return real_render(*args, **kwargs)

    monkeypatch.setattr(render_module, "render", counting_render)
    peak, res = _peak_bytes(lambda: render_units(net, units, max_memory_gb=budget / 2**30, **kw))
    assert sum(batches) == 32 and 4 <= max(batches) <= 8, batches
    assert peak <= 1.1 * budget < p_all  # the budget is kept, and it mattered
    assert (res.final - ref.final).abs().max() < 1e-4  # chunking changes no image
