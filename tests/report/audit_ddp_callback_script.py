"""Run by test_audit_sharded.py: AuditReportCallback in a 2-process CPU (gloo) DDP validate."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "callbacks"))
from cb_common import loaders, trained_module, trainer  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from lightning_fv.callbacks import AuditReportCallback  # noqa: E402

KWARGS = dict(layers=["block2", "fc"], module="model", units_per_layer=2, steps=2,
              max_images=40, batch_size=1, path_images=2, path_steps=3, sections=[
                  "model", "visualizations", "sanity", "path_linearity"])


def main(out: str, devices: int) -> None:
    cb = AuditReportCallback(every_n_epochs=1, at_fit_end=False,
                             output_dir=str(Path(out) / "audit"), **KWARGS)
    _, val = loaders()
    tr = trainer(callbacks=[cb], devices=devices, strategy="ddp" if devices > 1 else "auto",
                 logger=CSVLogger(out, name="run", version=0))
    tr.validate(trained_module(), val, verbose=False)
    torch.save({"reports": cb.reports, "world_size": tr.world_size,
                "numbers": {n: s.numbers for n, s in cb.last_result.sections.items()},
                "shards": cb.last_result.sections["visualizations"].data["shards"]},
               Path(out) / f"result_rank{tr.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
