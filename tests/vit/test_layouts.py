"""Unit semantics in every activation layout: tokens (timm ViT), channels-last (Swin,
ConvNeXt MLPs), conv maps, vectors — against hand computations on the raw activations."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from lightning_fv.optvis import objectives as obj
from lightning_fv.optvis.hooks import (
    Unit,
    capture,
    check_unit_index,
    list_layers,
    parse_unit,
    parse_units,
    record,
)
from lightning_fv.optvis.layout import Layout, as_layout, channels_first, detect_layout


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()


@pytest.fixture(scope="module")
def swin() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32,
                             embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                             window_size=4).eval()


@pytest.fixture(scope="module")
def convnext() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", pretrained=False, dims=(12, 16, 24, 32),
                             depths=(1, 1, 1, 1), conv_mlp=False).eval()


def _raw(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    with torch.no_grad(), capture(model, [layer]) as acts:
        model(x)
    return acts[layer], acts


def _x(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_vit_channel_unit_is_the_mean_over_patch_tokens_without_cls(vit):
    raw, acts = _raw(vit, "blocks.1", _x())
    assert raw.shape == (2, 1 + 16, 192)  # 64 px / 16 px patches: CLS + 4x4 grid
    want = raw[:, 1:, 3].mean(1)
    assert torch.allclose(obj.channel("blocks.1", 3)(acts), want, atol=1e-6)
    assert torch.allclose(obj.units_objective(["blocks.1:3", "blocks.1:3"])(acts), want,
                          atol=1e-6)
    assert not torch.allclose(want, raw[:, :, 3].mean(1))  # the CLS token is excluded


def test_vit_positions_address_grid_cells_and_the_cls_token(vit):
    raw, acts = _raw(vit, "blocks.1", _x())
    cell = raw[:, 1 + 1 * 4 + 2, 7]  # row 1, column 2 of the 4x4 grid, row-major
    assert torch.allclose(obj.unit("blocks.1:7@1,2")(acts), cell)
    assert torch.allclose(obj.unit("blocks.1:7@cls")(acts), raw[:, 0, 7])
    mixed = obj.units_objective(["blocks.1:7@cls", "blocks.1:7@1,2"])(acts)
    assert torch.allclose(mixed, torch.stack([raw[0, 0, 7], raw[1, 5 + 2, 7]]))


def test_unit_grammar_parses_prefix_tokens_and_prints_them_back():
    assert parse_unit("blocks.5:3@cls") == Unit("blocks.5", 3, "cls")
    assert str(parse_unit("blocks.5:3@reg0")) == "blocks.5:3@reg0"
    assert [str(u) for u in parse_units("[blocks.5:3@cls, blocks.5:1@2,3]")] == [
        "blocks.5:3@cls", "blocks.5:1@2,3"]
    with pytest.raises(ValueError, match=r"'@row,col' or a prefix token"):
        parse_unit("blocks.5:3@1,x")


def test_check_unit_index_counts_feature_channels_of_tokens(vit):
    raw, acts = _raw(vit, "blocks.1", _x(1))
    lay = acts.layouts["blocks.1"]
    with pytest.raises(IndexError, match=r"'blocks.1' with 192 channels \(valid: 0..191\)"):
        check_unit_index(Unit("blocks.1", 192), raw, lay)
    with pytest.raises(IndexError, match=r"patch grid \(4, 4\)"):
        check_unit_index(Unit("blocks.1", 0, (4, 0)), raw, lay)
    with pytest.raises(ValueError, match=r"valid: \['@cls', '@prefix0'\]"):
        check_unit_index(Unit("blocks.1", 0, "reg0"), raw, lay)
    with pytest.raises(IndexError, match=r"192 channels"):
        obj.channel("blocks.1", 500)(acts)


def test_vit_layouts_are_detected_and_listed(vit):
    info = {n: (s, lay) for n, _, s, lay in list_layers(vit, (3, 64, 64), with_layout=True)}
    assert info["blocks.1"][1] == Layout("tokens", 1, (4, 4), ("cls",))
    assert str(info["blocks.1"][1]) == "tokens(prefix=1, grid=4x4)"
    assert info["patch_embed"][1].kind == "tokens"  # before the CLS token is prepended
    assert info["patch_embed"][1].num_prefix_tokens == 0
    assert info["patch_embed.proj"][1].kind == "conv"
    assert info["head"][1].kind == "vector"
    assert len(parse_units("blocks.1:*", vit, 64)) == 192


def test_swin_stage_is_channels_last_and_units_average_over_positions(swin):
    x = _x(2, 32)
    raw, acts = _raw(swin, "layers.0", x)
    assert raw.shape == (2, 8, 8, 16) and acts.layouts["layers.0"].kind == "channels_last"
    assert torch.allclose(obj.channel("layers.0", 5)(acts), raw[..., 5].mean((1, 2)),
                          atol=1e-6)
    assert torch.allclose(obj.unit("layers.0:5@2,6")(acts), raw[:, 2, 6, 5])
    means = record(swin, ["layers.0"], x, reduce="channel_mean")["layers.0"]
    assert torch.allclose(means, raw.mean((1, 2)), atol=1e-6)
    assert len(parse_units("layers.0:*", swin, 32)) == 16


def test_convnext_mlp_is_channels_last_and_its_block_conv(convnext):
    x = _x(2, 32)
    layer = "stages.0.blocks.0.mlp.fc1"
    raw, acts = _raw(convnext, layer, x)
    assert raw.shape == (2, 8, 8, 48) and acts.layouts[layer].kind == "channels_last"
    assert torch.allclose(obj.channel(layer, 40)(acts), raw[..., 40].mean((1, 2)), atol=1e-6)
    raw_b, acts_b = _raw(convnext, "stages.0.blocks.0", x)
    assert raw_b.shape == (2, 12, 8, 8) and acts_b.layouts["stages.0.blocks.0"].kind == "conv"
    assert torch.allclose(obj.channel("stages.0.blocks.0", 11)(acts_b),
                          raw_b[:, 11].mean((1, 2)), atol=1e-6)


class _Ambiguous(nn.Module):
    """A container whose ``(B, 4, 4, 4)`` output is channels-last, which nothing says."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


def test_a_stated_layout_wins_over_detection(monkeypatch):
    net = _Ambiguous().eval()
    x = _x(2, 4)
    with torch.no_grad(), capture(net, ["body"]) as acts:
        net(x)
    raw = acts["body"]
    assert acts.layouts["body"].kind == "conv"  # ambiguous shape: the default
    with torch.no_grad(), capture(net, ["body"], layouts={"body": "channels_last"}) as acts:
        net(x)
    assert torch.allclose(obj.channel("body", 1)(acts), raw[..., 1].mean((1, 2)))
    net.fv_layouts = {"body": "BHWC"}  # the model attribute states it too
    assert list_layers(net, (3, 4, 4), with_layout=True)[0][3].kind == "channels_last"
    with pytest.raises(ValueError, match=r"unknown layout 'grid'; valid"):
        as_layout("grid")
    with pytest.raises(ValueError, match=r"reads \(B, N, C\) tensors .* shape \(2, 4, 4, 4\)"):
        detect_layout(raw, stated="tokens")
    with pytest.raises(KeyError, match=r"unknown layer 'bdy'.*body"):
        with capture(net, ["body"], layouts={"bdy": "conv"}):
            pass


def test_channels_first_lays_tokens_on_the_grid_row_major():
    t = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)  # 1 prefix + 2x3 grid
    lay = Layout("tokens", 1, (2, 3))
    cf = channels_first(t, lay)
    assert cf.shape == (2, 3, 2, 3)
    assert torch.equal(cf[1, 2, 1, 0], t[1, 1 + 3, 2])
    assert detect_layout(torch.zeros(1, 10, 5)) == Layout("tokens", 0, (1, 10))
