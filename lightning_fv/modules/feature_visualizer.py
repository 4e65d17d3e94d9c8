"""``FeatureVisualizer``: a unit sweep as a Lightning ``predict`` run.

Each predict batch is a fixed chunk of unit indices; ``predict_step`` renders those units
as one batch with :func:`lightning_fv.optvis.render.render`. Under a DDP strategy the
distributed sampler shards the units across devices and nodes; at the end of the epoch
the images are all-gathered (shards may differ in length), de-duplicated and put back in
unit order,
and rank zero writes them (``units.safetensors`` + one PNG grid per layer) if
``output_dir`` is set. Every unit uses the same seed and the chunks are fixed, so the images are
bit-for-bit those of a single-process run, however the sweep was sharded.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_fv.models import build_model
from lightning_fv.optvis.hooks import expand_units, parse_unit
from lightning_fv.optvis.objectives import units_objective
from lightning_fv.optvis.render import render


class _Chunks(torch.utils.data.Dataset):
    """Item ``k`` is the tensor of unit indices of chunk ``k`` (a fixed partition, so a
    unit is rendered with the same batch-mates however the chunks are sharded)."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return (self.n + self.size - 1) // self.size

    def __getitem__(self, k: int) -> Tensor:
        return torch.arange(k * self.size, min(self.n, (k + 1) * self.size))


class FeatureVisualizer(L.LightningModule):
    """Render a sweep of units with ``trainer.predict``; shards across devices under DDP.

    Args:
        model: a model name for :func:`lightning_fv.models.build_model` (``"bundled"``, a
            torchvision/timm name) or an ``nn.Module``.
        units: Lucent-style unit names; ``"layer:*"`` expands to all channels and
            ``"layer:0-9"`` to a range.
        checkpoint_path: local weights for a named model (safetensors / weights_only).
        mean, std: input normalization applied before the model (``None`` when the model
            normalizes itself, like the bundled model). Never guessed.
        image_size: side of the rendered images (pixels).
        thresholds: optimizer steps at which images are kept (the last is the result).
        transforms: ``"standard"`` (Lucent's) or ``"none"``.
        fft, decorrelate: image parameterization.
        lr: Adam learning rate.
        seed: seed of every unit.
        batch_size: units rendered together per predict step.
        bf16: render under bf16 autocast (CUDA).
        channels_last, compile: GPU options passed to ``render``.
        output_dir: where rank zero writes ``units.safetensors`` and PNG grids.
    """

    def __init__(
        self,
        model: str | nn.Module = "bundled",
        units: list[str] | None = None,
        checkpoint_path: str | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        image_size: int = 64,
        thresholds: list[int] | None = None,
        transforms: str = "standard",
        fft: bool = True,
        decorrelate: bool = True,
        lr: float = 0.05,
        seed: int = 0,
        batch_size: int = 32,
        bf16: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        if transforms not in ("standard", "none"):
            raise ValueError(f"transforms must be 'standard' or 'none', got {transforms!r}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.net = model if isinstance(model, nn.Module) else build_model(
            model, checkpoint_path=checkpoint_path)
        self.net.eval().requires_grad_(False)
        self.units = expand_units(list(units or ["fc:*"]), self.net, image_size)
        self.mean, self.std = mean, std
        self.image_size = image_size
        self.thresholds = sorted(thresholds or [512])
        self.transforms = transforms
        self.fft, self.decorrelate, self.lr = fft, decorrelate, lr
        self.seed = seed
        self.batch_size = batch_size
        self.bf16, self.channels_last, self.compile_model = bf16, channels_last, compile
        self.output_dir = output_dir
        self._outputs: list[tuple[Tensor, Tensor, Tensor]] = []
        self.results: dict[str, object] = {}

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_Chunks(len(self.units), self.batch_size), batch_size=None,
                          shuffle=False)

    def forward(self, idx: Tensor) -> dict[str, Tensor]:
        names = [self.units[int(i)] for i in idx]
        normalize = None if self.mean is None else (self.mean, self.std)
        with torch.inference_mode(False), torch.enable_grad():
            res = render(
                self.net,
                units_objective(names),
                param={"fft": self.fft, "decorrelate": self.decorrelate},
                transforms="standard" if self.transforms == "standard" else None,
                optimizer=lambda p: torch.optim.Adam(p, lr=self.lr),
                thresholds=self.thresholds,
                batch=len(names),
                image_size=self.image_size,
                normalize=normalize,
                seeds=self.seed,
                autocast_dtype=torch.bfloat16 if self.bf16 else None,
                channels_last=self.channels_last,
                compile=self.compile_model,
                unit_names=names,
            )
        return {"index": idx.detach().clone(), "images": res.final, "values": res.values[
            self.thresholds[-1]]}

    def predict_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        out = self(batch)
        self._outputs.append((out["index"].cpu(), out["images"], out["values"]))
        return out

    def on_predict_epoch_start(self) -> None:
        self._outputs = []

    def on_predict_epoch_end(self) -> None:
        idx = torch.cat([o[0] for o in self._outputs]).to(self.device)
        imgs = torch.cat([o[1] for o in self._outputs]).to(self.device)
        vals = torch.cat([o[2] for o in self._outputs]).to(self.device)
        if self.trainer.world_size > 1:
            # Lightning's predict sampler does not pad: shards may differ in length.
            sizes = self.all_gather(torch.tensor(len(idx), device=self.device)).flatten()
            n = int(sizes.max())
            gathered = []
            for t in (idx, imgs, vals):
                padded = t.new_zeros((n, *t.shape[1:]))
                padded[: len(t)] = t
                g = self.all_gather(padded)
                gathered.append(torch.cat([g[r, : int(sizes[r])] for r in range(len(sizes))]))
            idx, imgs, vals = gathered
        order = torch.argsort(idx.cpu(), stable=True)
        idx, imgs, vals = idx.cpu()[order], imgs.cpu()[order], vals.cpu()[order]
        keep = torch.ones_like(idx, dtype=torch.bool)
        keep[1:] = idx[1:] != idx[:-1]
        self.results = {"units": [self.units[int(i)] for i in idx[keep]],
                        "images": imgs[keep], "values": vals[keep]}
        if self.output_dir is not None and self.trainer.is_global_zero:
            save_sweep(self.results, self.output_dir)


def save_sweep(results: dict[str, object], output_dir: str) -> list[Path]:
    """Write ``units.safetensors`` (images ``(N, 3, H, W)``, values ``(N,)``, unit names in
    the metadata), the same as ``units.pt`` (loads with ``weights_only=True``) and one PNG
    grid per layer; returns the written paths."""
    import json

    from safetensors.torch import save_file

    from lightning_fv.utils.images import save_grid

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    units: list[str] = results["units"]  # type: ignore[assignment]
    images: Tensor = results["images"]  # type: ignore[assignment]
    values: Tensor = results["values"]  # type: ignore[assignment]
    paths = [out / "units.safetensors", out / "units.pt"]
    save_file({"images": images.contiguous(), "values": values.contiguous()}, str(paths[0]),
              metadata={"units": json.dumps(units)})
    # the same tensors for torch.load(..., weights_only=True) users
    torch.save({"images": images, "values": values, "units": list(units)}, paths[1])
    by_layer: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        by_layer.setdefault(parse_unit(u).layer, []).append(i)
    for layer, rows in by_layer.items():
        paths.append(save_grid(images[rows], out / f"{layer.replace('.', '_')}.png"))
    return paths


def load_sweep(output_dir: str) -> dict[str, object]:
    """Read back what :func:`save_sweep` wrote."""
    import json

    from safetensors import safe_open

    path = str(Path(output_dir) / "units.safetensors")
    with safe_open(path, framework="pt") as f:
        units = json.loads((f.metadata() or {})["units"])
        return {"units": units, "images": f.get_tensor("images"), "values": f.get_tensor("values")}
