"""VA-VAE: LDM→diffusers converter against a test-only LDM autoencoder; latent normalization."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_fv.diffusion import (
    VAVAE_CONFIG,
    LatentNormalizer,
    ResizeAutoencoder,
    build_vavae,
    convert_ldm_vae_state_dict,
    decode_latents,
    encode_latents,
    load_vavae,
)

# ---------------------------------------------------------------------------------------------
# A compact LDM autoencoder (the release's tokenizer/autoencoder.py layout and formulas):
# GroupNorm(32, eps 1e-6) + swish residual blocks, 1×1-conv single-head attention, pad (0,1,0,1)
# stride-2 down-sampling, nearest ×2 up-sampling + conv.


def gn(c):
    return nn.GroupNorm(8, c, eps=1e-6)


class Res(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = gn(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = gn(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q = self.q(h).reshape(b, c, -1).transpose(1, 2)
        k = self.k(h).reshape(b, c, -1)
        v = self.v(h).reshape(b, c, -1)
        w = torch.softmax(q @ k * c**-0.5, dim=2)
        return x + self.proj_out((v @ w.transpose(1, 2)).reshape(b, c, hh, ww))


class Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class LDMAutoencoder(nn.Module):
    """ch=16, ch_mult=(1, 2), 1 res block, attention at the lowest resolution, z=4."""

    def __init__(self, ch=16, mult=(1, 2), nres=1, z=4, attn_lowest=True):
        super().__init__()
        n = len(mult)
        enc, dec = nn.Module(), nn.Module()
        enc.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        enc.down = nn.ModuleList()
        cin = ch
        for i, m in enumerate(mult):
            lvl = nn.Module()
            lvl.block = nn.ModuleList()
            lvl.attn = nn.ModuleList()
            for _ in range(nres):
                lvl.block.append(Res(cin, ch * m))
                cin = ch * m
                if attn_lowest and i == n - 1:
                    lvl.attn.append(Attn(cin))
            if i != n - 1:
                lvl.downsample = Down(cin)
            enc.down.append(lvl)
        enc.mid = nn.Module()
        enc.mid.block_1, enc.mid.attn_1, enc.mid.block_2 = Res(cin, cin), Attn(cin), Res(cin, cin)
        enc.norm_out, enc.conv_out = gn(cin), nn.Conv2d(cin, 2 * z, 3, padding=1)
        dec.conv_in = nn.Conv2d(z, cin, 3, padding=1)
        dec.mid = nn.Module()
        dec.mid.block_1, dec.mid.attn_1, dec.mid.block_2 = Res(cin, cin), Attn(cin), Res(cin, cin)
        ups = []
        for i in reversed(range(n)):
            lvl = nn.Module()
            lvl.block = nn.ModuleList()
            lvl.attn = nn.ModuleList()
            for _ in range(nres + 1):
                lvl.block.append(Res(cin, ch * mult[i]))
                cin = ch * mult[i]
                if attn_lowest and i == n - 1:
                    lvl.attn.append(Attn(cin))
            if i != 0:
                lvl.upsample = Up(cin)
            ups.insert(0, lvl)
        dec.up = nn.ModuleList(ups)
        dec.norm_out, dec.conv_out = gn(cin), nn.Conv2d(cin, 3, 3, padding=1)
        self.encoder, self.decoder = enc, dec
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)
        self.n = n

    def encode_mean(self, x):
        e = self.encoder
        h = e.conv_in(x)
        for i, lvl in enumerate(e.down):
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
            if i != self.n - 1:
                h = lvl.downsample(h)
        h = e.mid.block_2(e.mid.attn_1(e.mid.block_1(h)))
        h = e.conv_out(F.silu(e.norm_out(h)))
        return self.quant_conv(h).chunk(2, dim=1)[0]

    def decode(self, z):
        d = self.decoder
        h = d.mid.block_2(d.mid.attn_1(d.mid.block_1(d.conv_in(self.post_quant_conv(z)))))
        for i in reversed(range(self.n)):
            lvl = d.up[i]
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
            if i != 0:
                h = lvl.upsample(h)
        return d.conv_out(F.silu(d.norm_out(h)))


TINY = dict(down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
            up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
            norm_num_groups=8, sample_size=16)


def _randomised_ldm(seed=0):
    torch.manual_seed(seed)
    ldm = LDMAutoencoder()
    with torch.no_grad():
        for p in ldm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ldm.eval()


def test_converter_maps_random_ldm_state_dict_to_equal_diffusers_model():
    ldm = _randomised_ldm()
    state = dict(ldm.state_dict())
    state["loss.logvar"] = torch.zeros(())  # training-only entries are dropped
    state["foundation_model.model.w"] = torch.zeros(1)
    vae = build_vavae(**TINY).eval()
    vae.load_state_dict(convert_ldm_vae_state_dict({"state_dict": state}), strict=True)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(encode_latents(vae, x), ldm.encode_mean(x), atol=1e-5,
                                   rtol=1e-5)
        torch.testing.assert_close(decode_latents(vae, z), ldm.decode(z), atol=1e-5, rtol=1e-5)


def test_load_vavae_reads_an_ldm_checkpoint_strictly(tmp_path):
    ldm = _randomised_ldm(1)
    path = tmp_path / "vavae.pt"
    torch.save({"state_dict": ldm.state_dict()}, path)
    vae = load_vavae(path, **TINY)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(decode_latents(vae, z), ldm.decode(z), atol=1e-5, rtol=1e-5)


def test_converter_rejects_unknown_keys():
    with pytest.raises(KeyError, match="decoder.weird"):
        convert_ldm_vae_state_dict({"decoder.weird.weight": torch.zeros(1)})


def test_vavae_config_is_the_release_f16d32_layout():
    assert VAVAE_CONFIG["block_out_channels"] == (128, 128, 256, 256, 512)
    assert VAVAE_CONFIG["latent_channels"] == 32
    assert VAVAE_CONFIG["down_block_types"][-1] == "AttnDownEncoderBlock2D"
    assert VAVAE_CONFIG["up_block_types"][0] == "AttnUpDecoderBlock2D"
    # 4 down-samplings of 256 px: f16, the attention level has resolution 16
    assert 256 // 2 ** (len(VAVAE_CONFIG["block_out_channels"]) - 1) == 16


def test_latent_normalizer_round_trip_and_release_stats_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(1, 32, 1, 1, generator=g)
    std = torch.rand(1, 32, 1, 1, generator=g) + 0.5
    torch.save({"mean": mean, "std": std}, tmp_path / "latents_stats.pt")
    norm = LatentNormalizer.from_stats_file(tmp_path / "latents_stats.pt", multiplier=0.7)
    z = torch.randn(2, 32, 4, 4, generator=g)
    zn = norm.normalize(z)
    torch.testing.assert_close(zn, (z - mean) / std * 0.7)
    torch.testing.assert_close(norm.denormalize(zn), z, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        LatentNormalizer(0.0, 0.0)


def test_resize_autoencoder_is_identity_at_factor_one_and_pools_otherwise():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    ident = ResizeAutoencoder(1, 3)
    assert torch.equal(ident.decode(ident.encode(x)), x)
    grey = ResizeAutoencoder(2, 1)
    z = grey.encode(x)
    assert z.shape == (2, 1, 4, 4)
    torch.testing.assert_close(z[0, 0, 0, 0], x[0, :, :2, :2].mean())
    flat = torch.full((1, 1, 4, 4), 0.3)
    assert torch.allclose(grey.decode(flat), torch.full((1, 3, 8, 8), 0.3))
