"""Test-only reference for LightningDiT, written from the release's documented formulas.

It does not use lightning_fv.diffusion: the key table is spelled out from the official
module tree (``x_embedder.proj``, ``t_embedder.mlp.{0,2}``, ``y_embedder.embedding_table``,
``pos_embed``, ``feat_rope.freqs_{cos,sin}``, ``blocks.i.{norm1,norm2,attn.{qkv,q_norm,k_norm,
proj},mlp.{w12,w3|fc1,fc2},adaLN_modulation.1}``, ``final_layer.{norm_final,linear,
adaLN_modulation.1}``), the fixed tables are computed with NumPy in the release's own way
(``np.meshgrid`` "xy" order, EVA-02 broadcast-concatenated RoPE), and the forward pass is a
plain functional program with explicit softmax attention.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def official_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    d, p, c = cfg["hidden_size"], cfg["patch_size"], cfg["in_channels"]
    n_tok = (cfg["input_size"] // p) ** 2
    hd = d // cfg["num_heads"]
    c_out = 2 * c if cfg.get("learn_sigma", False) else c
    rows = cfg["num_classes"] + (1 if cfg["class_dropout_prob"] > 0 else 0)
    s: dict[str, tuple[int, ...]] = {
        "pos_embed": (1, n_tok, d),
        "x_embedder.proj.weight": (d, c, p, p), "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256), "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d), "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (rows, d),
    }
    if cfg.get("use_rope"):
        s["feat_rope.freqs_cos"] = (n_tok, hd)
        s["feat_rope.freqs_sin"] = (n_tok, hd)
    hidden = int(d * cfg.get("mlp_ratio", 4.0))
    n_mod = 4 if cfg.get("wo_shift") else 6
    for i in range(cfg["depth"]):
        b = f"blocks.{i}."
        if cfg.get("use_rmsnorm"):
            s[b + "norm1.weight"] = (d,)
            s[b + "norm2.weight"] = (d,)
        s[b + "attn.qkv.weight"] = (3 * d, d)
        s[b + "attn.qkv.bias"] = (3 * d,)
        if cfg.get("use_qknorm"):
            for q in ("q_norm", "k_norm"):
                s[b + f"attn.{q}.weight"] = (hd,)
                if not cfg.get("use_rmsnorm"):
                    s[b + f"attn.{q}.bias"] = (hd,)
        s[b + "attn.proj.weight"] = (d, d)
        s[b + "attn.proj.bias"] = (d,)
        if cfg.get("use_swiglu"):
            h = int(2 / 3 * hidden)
            s[b + "mlp.w12.weight"] = (2 * h, d)
            s[b + "mlp.w12.bias"] = (2 * h,)
            s[b + "mlp.w3.weight"] = (d, h)
            s[b + "mlp.w3.bias"] = (d,)
        else:
            s[b + "mlp.fc1.weight"] = (hidden, d)
            s[b + "mlp.fc1.bias"] = (hidden,)
            s[b + "mlp.fc2.weight"] = (d, hidden)
            s[b + "mlp.fc2.bias"] = (d,)
        s[b + "adaLN_modulation.1.weight"] = (n_mod * d, d)
        s[b + "adaLN_modulation.1.bias"] = (n_mod * d,)
    if cfg.get("use_rmsnorm"):
        s["final_layer.norm_final.weight"] = (d,)
    s["final_layer.linear.weight"] = (p * p * c_out, d)
    s["final_layer.linear.bias"] = (p * p * c_out,)
    s["final_layer.adaLN_modulation.1.weight"] = (2 * d, d)
    s["final_layer.adaLN_modulation.1.bias"] = (2 * d,)
    return s


def np_pos_embed(dim: int, grid: int) -> np.ndarray:
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))

    def one(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one(dim // 2, gw), one(dim // 2, gh)], axis=1)


def np_rope(head_dim: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    dim = head_dim // 2
    freqs = 1.0 / (10000 ** (np.arange(0, dim, 2)[: dim // 2].astype(np.float32) / dim))
    t = np.arange(grid, dtype=np.float32)
    f = np.repeat(np.einsum("i,f->if", t, freqs), 2, axis=-1)  # (grid, dim), pairs repeated
    a = np.broadcast_to(f[:, None, :], (grid, grid, dim))
    b = np.broadcast_to(f[None, :, :], (grid, grid, dim))
    full = np.concatenate([a, b], axis=-1).reshape(grid * grid, head_dim)
    return np.cos(full), np.sin(full)


def random_official_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the official layout with the exact fixed tables."""
    g = torch.Generator().manual_seed(seed)
    state = {k: 0.2 * torch.randn(shape, generator=g) for k, shape in official_shapes(cfg).items()}
    grid = cfg["input_size"] // cfg["patch_size"]
    state["pos_embed"] = torch.from_numpy(np_pos_embed(cfg["hidden_size"], grid)).float()[None]
    if cfg.get("use_rope"):
        cos, sin = np_rope(cfg["hidden_size"] // cfg["num_heads"], grid)
        state["feat_rope.freqs_cos"] = torch.from_numpy(cos).float()
        state["feat_rope.freqs_sin"] = torch.from_numpy(sin).float()
    for k in state:
        if k.endswith(("norm1.weight", "norm2.weight", "norm_final.weight", "q_norm.weight",
                       "k_norm.weight")):
            state[k] = 1 + 0.1 * torch.randn(state[k].shape, generator=g)
    return state


def _rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _ln(x, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


def _rot(x):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([-x2, x1], dim=-1).reshape(x.shape)


def reference_forward(state: dict, cfg: dict, x: torch.Tensor, t: torch.Tensor,
                      y: torch.Tensor) -> torch.Tensor:
    s = state
    d, p, nh = cfg["hidden_size"], cfg["patch_size"], cfg["num_heads"]
    hd = d // nh
    n = x.shape[0]
    h = F.conv2d(x, s["x_embedder.proj.weight"], s["x_embedder.proj.bias"], stride=p)
    g = h.shape[-1]
    h = h.flatten(2).transpose(1, 2) + s["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    temb = F.linear(F.silu(F.linear(temb, s["t_embedder.mlp.0.weight"],
                                    s["t_embedder.mlp.0.bias"])),
                    s["t_embedder.mlp.2.weight"], s["t_embedder.mlp.2.bias"])
    c = temb + s["y_embedder.embedding_table.weight"][y]
    rms = cfg.get("use_rmsnorm", False)

    def norm(v, key):
        return _rms(v, s[key]) if rms else _ln(v)

    for i in range(cfg["depth"]):
        b = f"blocks.{i}."
        mod = F.linear(F.silu(c), s[b + "adaLN_modulation.1.weight"],
                       s[b + "adaLN_modulation.1.bias"])
        if cfg.get("wo_shift"):
            sc1, g1, sc2, g2 = mod.chunk(4, 1)
            sh1 = sh2 = torch.zeros_like(sc1)
        else:
            sh1, sc1, g1, sh2, sc2, g2 = mod.chunk(6, 1)
        a = norm(h, b + "norm1.weight") * (1 + sc1[:, None]) + sh1[:, None]
        qkv = F.linear(a, s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"])
        qkv = qkv.reshape(n, -1, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if cfg.get("use_qknorm"):
            if rms:
                q = _rms(q, s[b + "attn.q_norm.weight"])
                k = _rms(k, s[b + "attn.k_norm.weight"])
            else:
                q = F.layer_norm(q, (hd,), s[b + "attn.q_norm.weight"], s[b + "attn.q_norm.bias"])
                k = F.layer_norm(k, (hd,), s[b + "attn.k_norm.weight"], s[b + "attn.k_norm.bias"])
        if cfg.get("use_rope"):
            cos, sin = s["feat_rope.freqs_cos"], s["feat_rope.freqs_sin"]
            q = q * cos + _rot(q) * sin
            k = k * cos + _rot(k) * sin
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1)
        o = (att @ v).transpose(1, 2).reshape(n, -1, d)
        o = F.linear(o, s[b + "attn.proj.weight"], s[b + "attn.proj.bias"])
        h = h + g1[:, None] * o
        m = norm(h, b + "norm2.weight") * (1 + sc2[:, None]) + sh2[:, None]
        if cfg.get("use_swiglu"):
            u = F.linear(m, s[b + "mlp.w12.weight"], s[b + "mlp.w12.bias"])
            u1, u2 = u.chunk(2, -1)
            m = F.linear(F.silu(u1) * u2, s[b + "mlp.w3.weight"], s[b + "mlp.w3.bias"])
        else:
            m = F.linear(m, s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"])
            m = F.linear(F.gelu(m, approximate="tanh"), s[b + "mlp.fc2.weight"],
                         s[b + "mlp.fc2.bias"])
        h = h + g2[:, None] * m
    mod = F.linear(F.silu(c), s["final_layer.adaLN_modulation.1.weight"],
                   s["final_layer.adaLN_modulation.1.bias"])
    sh, sc = mod.chunk(2, 1)
    h = norm(h, "final_layer.norm_final.weight") * (1 + sc[:, None]) + sh[:, None]
    h = F.linear(h, s["final_layer.linear.weight"], s["final_layer.linear.bias"])
    c_out = h.shape[-1] // (p * p)
    img = h.reshape(n, g, g, p, p, c_out).permute(0, 5, 1, 3, 2, 4).reshape(n, c_out, g * p, g * p)
    return img[:, : cfg["in_channels"]]
