"""Run by test_ddp.py: validate with the three callbacks on 1 or 2 CPU processes (gloo)."""

import sys
from pathlib import Path

import torch
from cb_common import callbacks, loaders, trained_module, trainer
from lightning.pytorch.loggers import CSVLogger


def main(out: str, devices: int) -> None:
    cbs = callbacks()
    _, val = loaders()
    tr = trainer(callbacks=cbs, devices=devices, strategy="ddp" if devices > 1 else "auto",
                 logger=CSVLogger(out, name="run", version=0))
    tr.validate(trained_module(), val, verbose=False)
    fv, sanity, lin = cbs
    if tr.is_global_zero:
        torch.save({"images": fv.last_images, "fv_history": fv.history,
                    "sanity_history": sanity.history, "lin_history": lin.history,
                    "score": sanity.last_result.score,
                    "normalized": sanity.last_result.normalized,
                    "world_size": tr.world_size},
                   Path(out) / f"result_rank{tr.global_rank}.pt")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(sys.argv[1], int(sys.argv[2]))
