"""A small TopK sparse autoencoder (SAE) on a layer's activations, and its training loop.

Used for the SAE-feature objective of the invariant-set sampler
(``equidiff-invariant-sets-thesis`` §4.3: preserve the activation of an SAE feature).
The thesis uses SAEs of ViT-Prisma; this is a tiny self-trained stand-in with the usual
TopK architecture (Gao et al., 2024, "Scaling and evaluating sparse autoencoders"):

- encode: ``f = TopK_k(ReLU(W_enc (a − b_dec) + b_enc))`` — exactly the ``k`` largest
  pre-activations survive (ties broken by ``torch.topk``), the rest are 0;
- decode: ``â = W_dec f + b_dec`` with unit-norm decoder columns (renormalized after every
  training step);
- training: mean squared reconstruction error, Adam.

Activations ``a`` are vectors ``(N, d)``; for a conv layer every spatial position is one
vector (:func:`layer_tokens`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_fv.optvis.hooks import record

log = logging.getLogger(__name__)

__all__ = ["TopKSAE", "layer_tokens", "load_sae", "save_sae", "train_sae"]


class TopKSAE(nn.Module):
    """TopK sparse autoencoder ``d_in → d_hidden`` with ``k`` active latents.

    Args:
        d_in: activation dimension (channels of the layer).
        d_hidden: number of SAE features (dictionary size).
        k: active features per input vector (``1 ≤ k ≤ d_hidden``).
    """

    def __init__(self, d_in: int, d_hidden: int, k: int) -> None:
        super().__init__()
        if d_in < 1 or d_hidden < 1:
            raise ValueError(f"d_in and d_hidden must be ≥ 1, got {d_in}, {d_hidden}")
        if not 1 <= k <= d_hidden:
            raise ValueError(f"k must be in [1, d_hidden={d_hidden}], got {k}")
        self.d_in, self.d_hidden, self.k = int(d_in), int(d_hidden), int(k)
        w = torch.randn(d_hidden, d_in) / d_in ** 0.5
        w = F.normalize(w, dim=1)
        self.W_dec = nn.Parameter(w.clone())            # (d_hidden, d_in): rows = directions
        self.W_enc = nn.Parameter(w.t().clone())        # (d_in, d_hidden), tied init
        self.b_enc = nn.Parameter(torch.zeros(d_hidden))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def pre_activations(self, a: Tensor) -> Tensor:
        """``ReLU(W_enc (a − b_dec) + b_enc)`` ``(..., d_hidden)`` before the TopK."""
        return F.relu((a - self.b_dec) @ self.W_enc + self.b_enc)

    def encode(self, a: Tensor) -> Tensor:
        """Sparse codes ``(..., d_hidden)`` of activations ``(..., d_in)``: the ``k`` largest
        pre-activations kept, the rest set to 0 (differentiable in ``a`` through the kept
        entries)."""
        if a.shape[-1] != self.d_in:
            raise ValueError(f"expected activations with last dimension {self.d_in}, "
                             f"got {tuple(a.shape)}")
        pre = self.pre_activations(a)
        vals, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, vals)

    def decode(self, f: Tensor) -> Tensor:
        """Reconstruction ``(..., d_in)`` of codes ``(..., d_hidden)``."""
        return f @ self.W_dec + self.b_dec

    def forward(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """``(reconstruction, codes)``."""
        f = self.encode(a)
        return self.decode(f), f

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit norm."""
        self.W_dec.copy_(F.normalize(self.W_dec, dim=1))


@torch.no_grad()
def layer_tokens(model: nn.Module, layer: str, images: Tensor, batch_size: int = 256) -> Tensor:
    """Activations of ``layer`` for ``images`` ``(N, 3, H, W)`` as vectors ``(M, C)``: every
    spatial position of a conv output ``(N, C, h, w)`` is one vector (``M = N·h·w``); a
    ``(N, C)`` output gives ``M = N``. The model's mode and flags are restored."""
    return record(model, [layer], images, batch_size=batch_size, reduce="positions",
                  to_cpu=True)[layer]


def train_sae(
    activations: Tensor,
    d_hidden: int,
    k: int,
    steps: int = 500,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 0,
) -> tuple[TopKSAE, dict[str, float]]:
    """Train a :class:`TopKSAE` on activation vectors ``(N, d)`` by MSE with Adam.

    The decoder bias starts at the data mean. Returns the SAE (eval mode) and
    ``{"mse", "fvu"}`` on all of ``activations`` (fraction of variance unexplained).
    """
    if activations.dim() != 2 or activations.shape[0] < 2:
        raise ValueError(f"activations must be (N ≥ 2, d), got {tuple(activations.shape)}")
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        sae = TopKSAE(activations.shape[1], d_hidden, k)
    acts = activations.float()
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    n = acts.shape[0]
    with torch.enable_grad():
        for step in range(int(steps)):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            batch = acts[idx]
            rec, _ = sae(batch)
            loss = F.mse_loss(rec, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sae.normalize_decoder()
            if log_every and (step + 1) % log_every == 0:
                log.info("sae step %d: mse %.4g", step + 1, loss.item())
    sae.eval()
    with torch.no_grad():
        rec, _ = sae(acts)
        mse = float(F.mse_loss(rec, acts))
        fvu = mse / max(float(acts.var(0, unbiased=False).mean()), 1e-12)
    return sae, {"mse": mse, "fvu": fvu}


def save_sae(sae: TopKSAE, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the SAE weights as ``.safetensors`` with ``d_in``/``d_hidden``/``k`` (and
    ``extra``, e.g. the layer name) in the metadata."""
    from lightning_fv.utils.checkpoint import save_tensors

    meta = {"d_in": sae.d_in, "d_hidden": sae.d_hidden, "k": sae.k, **(extra or {})}
    return save_tensors(sae.state_dict(), path,
                        metadata={k: json.dumps(v) for k, v in meta.items()})


def load_sae(path: str | Path) -> tuple[TopKSAE, dict[str, Any]]:
    """Load a file written by :func:`save_sae`: ``(sae in eval mode, metadata)``, through
    the one checkpoint reader (``build_model("sae", checkpoint_path=...)`` is the same
    network by name)."""
    from lightning_fv.utils.checkpoint import read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAE file {str(path)!r} does not exist")
    ck = read_checkpoint(path, prefixes=())
    meta = {k: json.loads(v) for k, v in ck.metadata.items()}
    if not {"d_in", "d_hidden", "k"} <= set(meta):
        raise ValueError(f"{str(path)!r} lacks d_in/d_hidden/k metadata; found {sorted(meta)}")
    sae = TopKSAE(int(meta["d_in"]), int(meta["d_hidden"]), int(meta["k"]))
    sae.load_state_dict(ck.state_dict, strict=True)
    return sae.eval(), meta
