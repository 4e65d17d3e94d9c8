"""Run by test_ddp_invariant.py: InvariantSetSampler.predict on 1 or 2 CPU processes (gloo)."""

import sys
from pathlib import Path

import lightning as L
import torch


def main(out: str, devices: int) -> None:
    torch.set_num_threads(1)
    from _invariant_helpers import TinyClassifier, make_pipeline
    from torch.utils.data import DataLoader

    from lightning_fv.modules.invariant_sampler import InvariantSetSampler, QueryDataset

    pipe = make_pipeline()
    torch.manual_seed(1)
    clf = TinyClassifier().eval()
    g = torch.Generator().manual_seed(0)
    ds = QueryDataset(torch.rand(5, 3, 8, 8, generator=g), torch.arange(5) % 3)
    m = InvariantSetSampler(pipe, clf, samples_per_query=2, budget=2, lr=1.0, tau=0.0,
                            cutoffs=[0.5], output_dir=str(Path(out) / "sets"))
    tr = L.Trainer(accelerator="cpu", devices=devices, logger=False,
                   strategy="ddp" if devices > 1 else "auto", enable_progress_bar=False,
                   enable_model_summary=False)
    tr.predict(m, DataLoader(ds, batch_size=2), return_predictions=False)
    if tr.is_global_zero:
        torch.save({"results": m.results, "world_size": tr.world_size},
                   Path(out) / f"result_rank{tr.global_rank}.pt")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(sys.argv[1], int(sys.argv[2]))
