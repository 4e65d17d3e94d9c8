"""LightningDiT: official key layout, strict loading, forward equal to an independent reference."""

from __future__ import annotations

import pytest
import torch
from _dit_reference import official_shapes, random_official_state, reference_forward

from lightning_fv.diffusion import (
    LIGHTNINGDIT_PRESETS,
    LightningDiT,
    lightningdit,
    load_lightningdit_state_dict,
)

RELEASE_LIKE = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2,
                    num_heads=4, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10,
                    use_qknorm=False, use_swiglu=True, use_rope=True, use_rmsnorm=True,
                    wo_shift=False)
VARIANTS = [
    RELEASE_LIKE,
    {**RELEASE_LIKE, "use_qknorm": True, "patch_size": 1, "input_size": 4},
    {**RELEASE_LIKE, "use_swiglu": False, "use_rope": False, "use_rmsnorm": False,
     "use_qknorm": True, "wo_shift": True, "learn_sigma": True},
]


@pytest.mark.parametrize("cfg", VARIANTS)
def test_official_layout_loads_strictly_with_rope_buffers(cfg):
    model = LightningDiT(**cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_shapes(cfg)
    state = random_official_state(cfg)
    load_lightningdit_state_dict(model, state)
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.parametrize("cfg", VARIANTS)
def test_fixed_tables_equal_release_formulas(cfg):
    model = LightningDiT(**cfg)
    ref = random_official_state(cfg)
    torch.testing.assert_close(model.pos_embed, ref["pos_embed"], atol=1e-6, rtol=0)
    if cfg["use_rope"]:
        torch.testing.assert_close(model.feat_rope.freqs_cos, ref["feat_rope.freqs_cos"],
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(model.feat_rope.freqs_sin, ref["feat_rope.freqs_sin"],
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("cfg", VARIANTS)
def test_forward_equals_reference_in_float32(cfg):
    state = random_official_state(cfg, seed=1)
    model = load_lightningdit_state_dict(LightningDiT(**cfg), state).eval()
    g = torch.Generator().manual_seed(0)
    s = cfg["input_size"]
    x = torch.randn(3, cfg["in_channels"], s, s, generator=g)
    t = torch.tensor([0.0, 0.37, 1.0])
    y = torch.tensor([0, 7, cfg["num_classes"]])  # includes the null class
    with torch.no_grad():
        out = model(x, t, y)
        ref = reference_forward(state, cfg, x, t, y)
    assert out.shape == (3, cfg["in_channels"], s, s)
    assert ref.abs().max() > 0.1  # a non-trivial output
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_release_checkpoint_file_entries_and_prefixes(tmp_path):
    cfg = RELEASE_LIKE
    ema, raw = random_official_state(cfg, 2), random_official_state(cfg, 3)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in raw.items()}, "ema": ema,
                "opt": {"state": {}}}, path)
    m = load_lightningdit_state_dict(LightningDiT(**cfg), path, key="ema")
    assert torch.equal(m.blocks[0].attn.qkv.weight, ema["blocks.0.attn.qkv.weight"])
    m = load_lightningdit_state_dict(LightningDiT(**cfg), path, key="model")
    assert torch.equal(m.blocks[0].attn.qkv.weight, raw["blocks.0.attn.qkv.weight"])
    with pytest.raises(KeyError, match="no entry 'weights'"):
        load_lightningdit_state_dict(LightningDiT(**cfg), path, key="weights")


def test_strict_loading_rejects_a_missing_rope_buffer():
    state = random_official_state(RELEASE_LIKE)
    del state["feat_rope.freqs_cos"]
    with pytest.raises(RuntimeError, match="freqs_cos"):
        load_lightningdit_state_dict(LightningDiT(**RELEASE_LIKE), state)


def test_release_initialisation_gives_zero_velocity():
    # adaLN-Zero: the output layer starts at zero, as in the release.
    m = LightningDiT(**RELEASE_LIKE)
    out = m(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2]))
    assert torch.count_nonzero(out) == 0


def test_block_checkpointing_gives_identical_gradients():
    state = random_official_state(RELEASE_LIKE, 4)
    x = torch.randn(2, 4, 8, 8)
    grads = []
    for ckpt in (False, True):
        m = load_lightningdit_state_dict(LightningDiT(**RELEASE_LIKE, use_checkpoint=ckpt), state)
        m.eval()
        xi = x.clone().requires_grad_(True)
        m(xi, torch.tensor([0.2, 0.9]), torch.tensor([3, 4])).square().sum().backward()
        grads.append((xi.grad, m.blocks[1].mlp.w3.weight.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-6, rtol=1e-6)


def test_bf16_autocast_runs_close_to_float32():
    state = random_official_state(RELEASE_LIKE, 5)
    m = load_lightningdit_state_dict(LightningDiT(**RELEASE_LIKE), state).eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.6]), torch.tensor([1, 10])
    with torch.no_grad():
        ref = m(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x, t, y)
    assert low.dtype == torch.bfloat16
    assert torch.isfinite(low).all()
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_label_dropout_uses_the_null_row_in_training_only():
    m = LightningDiT(**{**RELEASE_LIKE, "class_dropout_prob": 1.0})
    emb = m.y_embedder
    y = torch.tensor([0, 3, 5])
    null = emb.embedding_table.weight[10]
    assert torch.equal(emb(y, train=True), null.expand(3, -1))
    assert torch.equal(emb(y, train=False), emb.embedding_table.weight[y])
    assert m.null_class == 10
    with pytest.raises(ValueError, match="no null class"):
        _ = LightningDiT(**{**RELEASE_LIKE, "class_dropout_prob": 0.0}).null_class


def test_presets_match_release_sizes():
    assert LIGHTNINGDIT_PRESETS["LightningDiT-XL/1"] == dict(depth=28, hidden_size=1152,
                                                             patch_size=1, num_heads=16)
    assert LIGHTNINGDIT_PRESETS["LightningDiT-B/2"] == dict(depth=12, hidden_size=768,
                                                            patch_size=2, num_heads=12)
    small = lightningdit("LightningDiT-B/2", depth=1, hidden_size=64, num_heads=4)
    assert (small.in_channels, small.input_size, small.patch_size) == (32, 16, 2)
    assert small.feat_rope is not None and isinstance(small.blocks[0].mlp.w12,
                                                      torch.nn.Linear)
    with pytest.raises(ValueError, match="LightningDiT-XL/1"):
        lightningdit("LightningDiT-XXL/1")


def test_bad_input_shape_names_expected_shape():
    m = LightningDiT(**RELEASE_LIKE)
    with pytest.raises(ValueError, match=r"\(N, 4, 8, 8\)"):
        m(torch.randn(1, 3, 8, 8), torch.rand(1), torch.tensor([0]))


@pytest.mark.slow
def test_torch_compile_matches_eager():
    state = random_official_state(RELEASE_LIKE, 6)
    m = load_lightningdit_state_dict(LightningDiT(**RELEASE_LIKE), state).eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.6]), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m)(x, t, y), m(x, t, y), atol=1e-4, rtol=1e-4)
