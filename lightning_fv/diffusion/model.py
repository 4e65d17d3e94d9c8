"""LightningDiT: the diffusion transformer of the EquiDiff sampler (weights only).

Thesis §3.1 (``equidiff-invariant-sets-thesis``) takes LightningDiT (Yao et al., 2025) as the
generative backbone. This module re-implements its architecture so that a checkpoint of the
official release (``hustvl/LightningDiT``) loads with ``strict=True`` (every key and shape,
including the fixed sin-cos position table ``pos_embed`` and the RoPE buffers
``feat_rope.freqs_cos`` / ``feat_rope.freqs_sin``) and ``forward(x, t, y)`` returns the same
velocity.

Architecture (DiT with the LightningDiT additions):

- patch embedding ``x_embedder.proj`` (conv, kernel = stride = ``patch_size``) plus the fixed 2-D
  sin-cos table ``pos_embed`` ``(1, T, D)`` (always added, also when RoPE is on);
- timestep embedder ``t_embedder.mlp``: sinusoid ``[cos(t·ω_k), sin(t·ω_k)]`` with
  ``ω_k = 10000^(-k/128)``, ``k < 128``, then Linear → SiLU → Linear. ``t`` is the flow time in
  [0, 1] (0 = noise, 1 = data) and is *not* rescaled to 1000;
- label embedder ``y_embedder.embedding_table`` with ``num_classes + 1`` rows when
  ``class_dropout_prob > 0``; the last row (index ``num_classes``) is the null class for
  classifier-free guidance; in training mode labels are replaced by it with probability
  ``class_dropout_prob``;
- ``depth`` adaLN-Zero blocks: ``x += g₁ · Attn(mod(N₁(x), s₁, a₁))``,
  ``x += g₂ · MLP(mod(N₂(x), s₂, a₂))`` with ``mod(h, s, a) = h·(1 + a) + s`` and
  ``(s₁, a₁, g₁, s₂, a₂, g₂) = Linear(SiLU(c))``, ``c = emb(t) + emb(y)``; with ``wo_shift`` the
  two shifts are dropped (4 chunks instead of 6). Norms are LayerNorm without affine
  (eps 1e-6) or RMSNorm (``use_rmsnorm``, eps 1e-6, learnable weight). The MLP is SwiGLU
  (``w12``, ``w3``; hidden ``int(2/3 · int(D · mlp_ratio))``) or GELU-tanh (``fc1``, ``fc2``).
  Attention uses ``scaled_dot_product_attention``, optional QK-norm (per head) and 2-D RoPE;
- final layer: ``mod(N(x), s, a)`` (always with shift) then Linear to ``p²·C_out``, unpatchify.

2-D RoPE (EVA-02 "fast" variant as used by the release): for head dimension ``d`` and a
``L×L`` token grid, ``ω_k = 10000^(-2k/(d/2))`` (``k < d/4``); the angle vector of token
``(i, j)`` is ``[rep2(i·ω), rep2(j·ω)]`` (each frequency repeated twice, row angles first),
and ``rope(q) = q·cos + rot(q)·sin`` with ``rot`` mapping each adjacent pair
``(q₂ₖ, q₂ₖ₊₁) → (−q₂ₖ₊₁, q₂ₖ)``.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightning_fv.utils.checkpoint import (
    MissingEntryError,
    detect_format,
    load_state_dict,
    read_checkpoint,
    strip_prefixes,
)

__all__ = [
    "LIGHTNINGDIT_PRESETS",
    "LightningDiT",
    "RMSNorm",
    "VisionRotaryEmbedding",
    "lightningdit",
    "lightningdit_config",
    "load_lightningdit_state_dict",
    "records_config",
    "sincos_pos_embed_2d",
]


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x², -1) + eps) · weight`` computed in float32, cast back to x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


def sincos_pos_embed_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos position table ``(grid², dim)`` of DiT/MAE (float32).

    Token ``n = i·grid + j`` (row ``i``, column ``j``) gets
    ``[sin(j·ω), cos(j·ω), sin(i·ω), cos(i·ω)]`` with ``ω_k = 10000^(-k/(dim/4))``,
    ``k < dim/4`` (the first half encodes the column coordinate, as in the release).
    """
    if dim % 4:
        raise ValueError(f"hidden size {dim} must be divisible by 4 for the 2-D sin-cos table")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    ii, jj = torch.meshgrid(pos, pos, indexing="ij")

    def enc(p: Tensor) -> Tensor:
        a = p.reshape(-1, 1) * omega
        return torch.cat([a.sin(), a.cos()], dim=1)

    return torch.cat([enc(jj), enc(ii)], dim=1).float()


class VisionRotaryEmbedding(nn.Module):
    """2-D rotary position embedding on a square ``grid × grid`` token layout.

    Buffers ``freqs_cos`` / ``freqs_sin`` have shape ``(grid², head_dim)`` (the release's key
    names). ``forward(q)`` takes ``(..., grid², head_dim)`` and returns the rotated tensor.
    """

    def __init__(self, head_dim: int, grid: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
        half = head_dim // 2
        freqs = theta ** (-torch.arange(0, half, 2).float() / half)  # (half/2,)
        pos = torch.arange(grid).float()
        ang = torch.repeat_interleave(pos[:, None] * freqs[None], 2, dim=-1)  # (grid, half)
        full = torch.cat(
            [ang[:, None, :].expand(grid, grid, half), ang[None, :, :].expand(grid, grid, half)],
            dim=-1,
        ).reshape(grid * grid, head_dim)
        self.register_buffer("freqs_cos", full.cos())
        self.register_buffer("freqs_sin", full.sin())

    @staticmethod
    def rotate_pairs(x: Tensor) -> Tensor:
        """``(x₀, x₁, x₂, x₃, …) → (−x₁, x₀, −x₃, x₂, …)`` on the last dimension."""
        pairs = x.unflatten(-1, (-1, 2))
        return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.freqs_cos + self.rotate_pairs(x) * self.freqs_sin


def _modulate(x: Tensor, shift: Tensor | None, scale: Tensor) -> Tensor:
    """adaLN modulation ``x·(1 + scale) + shift`` with ``(B, D)`` scale/shift on ``(B, T, D)``."""
    x = x * (1 + scale.unsqueeze(1))
    return x if shift is None else x + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    """``(B, C, H, W) → (B, (H/p)·(W/p), D)`` by a ``p×p`` stride-``p`` convolution ``proj``."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"input_size {img_size} is not divisible by patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.num_patches = self.grid**2
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"LightningDiT expects inputs of spatial size {(self.img_size, self.img_size)}, "
                f"got {tuple(x.shape[-2:])}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention (``qkv``, ``proj``; optional ``q_norm``/``k_norm``, RoPE)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, use_rmsnorm: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        if qk_norm:
            norm = (lambda: RMSNorm(self.head_dim)) if use_rmsnorm else (
                lambda: nn.LayerNorm(self.head_dim))
            self.q_norm, self.k_norm = norm(), norm()
        else:
            self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: VisionRotaryEmbedding | None = None) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        q, k = q.to(v.dtype), k.to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SwiGLUFFN(nn.Module):
    """``w3(SiLU(a) ⊙ b)`` with ``[a, b] = w12(x)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Mlp(nn.Module):
    """``fc2(GELU_tanh(fc1(x)))`` (timm's ``Mlp`` key layout)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _norm(dim: int, rms: bool) -> nn.Module:
    return RMSNorm(dim) if rms else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class LightningDiTBlock(nn.Module):
    """adaLN-Zero transformer block (see the module docstring for the formula)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, use_qknorm: bool,
                 use_swiglu: bool, use_rmsnorm: bool, wo_shift: bool) -> None:
        super().__init__()
        self.norm1 = _norm(hidden_size, use_rmsnorm)
        self.norm2 = _norm(hidden_size, use_rmsnorm)
        self.attn = Attention(hidden_size, num_heads, use_qknorm, use_rmsnorm)
        hidden = int(hidden_size * mlp_ratio)
        self.mlp = SwiGLUFFN(hidden_size, int(2 / 3 * hidden)) if use_swiglu else Mlp(
            hidden_size, hidden)
        self.wo_shift = wo_shift
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, (4 if wo_shift else 6) * hidden_size))

    def forward(self, x: Tensor, c: Tensor, rope: VisionRotaryEmbedding | None = None) -> Tensor:
        mod = self.adaLN_modulation(c)
        if self.wo_shift:
            scale1, gate1, scale2, gate2 = mod.chunk(4, dim=1)
            shift1 = shift2 = None
        else:
            shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(_modulate(self.norm1(x), shift1, scale1), rope)
        return x + gate2.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """``linear(mod(norm_final(x), shift, scale))`` → ``(B, T, p²·C_out)``."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int,
                 use_rmsnorm: bool) -> None:
        super().__init__()
        self.norm_final = _norm(hidden_size, use_rmsnorm)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the flow time, then a 2-layer SiLU MLP (``mlp.0``, ``mlp.2``)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
            nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        """``(N,) → (N, dim)``: ``[cos(t·ω), sin(t·ω)]``, ``ω_k = max_period^(-k/(dim/2))``."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                               device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class embedding with the extra null row for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: Tensor, train: bool) -> Tensor:
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


def records_config(init: Callable[..., None]) -> Callable[..., None]:
    """Decorate an ``nn.Module.__init__`` so that the module records its constructor
    arguments (defaults filled in) once, as ``self.config`` (diffusers'
    ``register_to_config`` idea): ``type(m)(**m.config)`` rebuilds the architecture."""
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        self.config = {k: v for k, v in bound.arguments.items() if k != "self"}

    return wrapper


class LightningDiT(nn.Module):
    """The LightningDiT velocity model ``v_θ(x_t, t, y)``.

    Constructor arguments carry the official names and defaults of the release; the module
    records them in ``self.config`` (:func:`records_config`).

    Args:
        input_size: latent side length ``H = W``.
        patch_size: patch side ``p``.
        in_channels: latent channels ``C``.
        hidden_size, depth, num_heads, mlp_ratio: transformer width/depth/heads/MLP ratio.
        class_dropout_prob: label drop probability in training; > 0 adds the null class row.
        num_classes: number of classes (the null class gets index ``num_classes``).
        learn_sigma: predict ``2C`` channels and return the first ``C`` (release option).
        use_qknorm, use_swiglu, use_rope, use_rmsnorm, wo_shift: LightningDiT options.
        use_checkpoint: gradient-checkpoint every block in ``forward``.
    """

    config: dict[str, Any]

    @records_config
    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 32,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = False,
        use_qknorm: bool = False,
        use_swiglu: bool = False,
        use_rope: bool = False,
        use_rmsnorm: bool = False,
        wo_shift: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        grid = self.x_embedder.grid
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(hidden_size, grid)[None],
                                      requires_grad=False)
        self.feat_rope = (VisionRotaryEmbedding(hidden_size // num_heads, grid)
                          if use_rope else None)
        self.blocks = nn.ModuleList([
            LightningDiTBlock(hidden_size, num_heads, mlp_ratio, use_qknorm, use_swiglu,
                              use_rmsnorm, wo_shift) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, use_rmsnorm)
        self.initialize_weights()

    @property
    def null_class(self) -> int:
        """Label index of the unconditional (null) class; requires ``class_dropout_prob > 0``."""
        if self.y_embedder.embedding_table.num_embeddings <= self.num_classes:
            raise ValueError("this LightningDiT has no null class (class_dropout_prob == 0); "
                             "classifier-free guidance and unconditional sampling need one")
        return self.num_classes

    def initialize_weights(self) -> None:
        """The release's initialisation: Xavier linears, zeroed adaLN and output layers."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        """``(N, T, p²·C) → (N, C, H, W)``."""
        p, c, g = self.patch_size, self.out_channels, self.x_embedder.grid
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor) -> Tensor:
        """Velocity ``(N, C, H, W)`` for latents ``x`` ``(N, C, H, W)``, flow times ``t``
        ``(N,)`` (or a scalar) in [0, 1] (0 = noise) and labels ``y`` ``(N,)`` (int64,
        ``num_classes`` = null class)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape (N, {self.in_channels}, "
                             f"{self.input_size}, {self.input_size}), got {tuple(x.shape)}")
        n = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(n)
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                h = checkpoint(block, h, c, self.feat_rope, use_reentrant=False)
            else:
                h = block(h, c, self.feat_rope)
        out = self.unpatchify(self.final_layer(h, c))
        return out[:, : self.in_channels] if self.learn_sigma else out


# depth, hidden_size, num_heads of the released sizes.
_SIZES = {"B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16),
          "1p0B": (24, 1536, 24), "1p6B": (28, 1792, 28)}
LIGHTNINGDIT_PRESETS: dict[str, dict[str, Any]] = {
    f"LightningDiT-{s}/{p}": dict(depth=d, hidden_size=h, patch_size=p, num_heads=n)
    for s, (d, h, n) in _SIZES.items() for p in (1, 2)
}
# The options of the released ImageNet-256 model (configs/lightningdit_xl_vavae_f16d32.yaml).
RELEASE_OPTIONS: dict[str, Any] = dict(
    input_size=16, in_channels=32, num_classes=1000, use_qknorm=False, use_swiglu=True,
    use_rope=True, use_rmsnorm=True, wo_shift=False)


def lightningdit(name: str, release_options: bool = True, **kwargs: Any) -> LightningDiT:
    """Build a preset by name (``"LightningDiT-XL/1"``, ``"LightningDiT-B/2"``, …).

    ``release_options`` applies the released VA-VAE f16d32 settings (16×16×32 latents,
    SwiGLU, RoPE, RMSNorm); ``kwargs`` override anything.
    """
    if name not in LIGHTNINGDIT_PRESETS:
        raise ValueError(f"unknown LightningDiT preset {name!r}; "
                         f"valid: {sorted(LIGHTNINGDIT_PRESETS)}")
    cfg = {**(RELEASE_OPTIONS if release_options else {}), **LIGHTNINGDIT_PRESETS[name], **kwargs}
    return LightningDiT(**cfg)


def lightningdit_config(model: LightningDiT) -> dict[str, Any]:
    """The constructor arguments that rebuild ``model``."""
    return dict(model.config)


def load_lightningdit_state_dict(
    model: LightningDiT, source: str | Path | dict[str, Tensor], key: str = "ema",
) -> LightningDiT:
    """Load official (or own) weights into ``model`` with ``strict=True``.

    ``source`` is a state dict or a file (``.safetensors`` or a ``torch.save`` checkpoint read
    with ``weights_only=True``). For a release training checkpoint ``{"model", "ema", "opt"}``
    the entry ``key`` (``"ema"`` or ``"model"``) is used. ``module.`` (DDP) and ``_orig_mod.``
    (torch.compile) prefixes are removed.
    """
    prefixes = ("module.", "_orig_mod.")
    if isinstance(source, dict):
        state = source[key] if isinstance(source.get(key), dict) else source
        state = strip_prefixes(state, prefixes)
    elif detect_format(source) == "safetensors":
        state = load_state_dict(source, prefixes=prefixes)
    else:
        try:
            state = load_state_dict(source, key=key, prefixes=prefixes)
        except MissingEntryError:
            ck = read_checkpoint(source, prefixes=prefixes)  # a flat state dict has no entries
            if ck.key is not None:
                raise
            state = ck.state_dict
    model.load_state_dict(state, strict=True)
    return model
