"""Issue 16's resumed-run question, measured: after an interrupted-and-resumed fit the
callbacks' numbers differ from an uninterrupted run's only because the weights do.

- With the shuffled training loader of ``cb_common`` (a ``DataLoader`` generator, which
  Lightning does not checkpoint) the resumed epoch sees another batch order, so the weights
  and the sanity score differ; each run's logged score is still exactly what a fresh run of
  the callback computes on that run's own final weights.
- With an unshuffled loader the resumed run trains the same weights bit for bit and logs
  the same score as the uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from cb_common import LAYERS, data, module, trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.callbacks.sanity_check import SanityCheckCallback


def _loaders(shuffle: bool) -> tuple[DataLoader, DataLoader]:
    ds = TensorDataset(*data())
    gen = torch.Generator().manual_seed(0) if shuffle else None
    return (DataLoader(ds, batch_size=10, shuffle=shuffle, generator=gen),
            DataLoader(ds, batch_size=10))


def _callback() -> SanityCheckCallback:
    return SanityCheckCallback(LAYERS, module="model", steps=3, strides=(1, 1, 1))


EPOCHS, STOP = 4, 2  # 4 epochs straight; 2 epochs, then a resume from their checkpoint


def _fit(shuffle: bool, tmp: Path) -> dict[str, object]:
    """``EPOCHS`` epochs uninterrupted, and ``STOP`` epochs + a resume to ``EPOCHS``."""
    out: dict[str, object] = {}
    cb = _callback()
    m = module()
    t = trainer(callbacks=[cb], max_epochs=EPOCHS)
    t.fit(m, *_loaders(shuffle))
    out["straight"] = (m, t, cb)
    first = _callback()
    m1 = module()
    t1 = trainer(callbacks=[first], max_epochs=STOP)
    t1.fit(m1, *_loaders(shuffle))
    ckpt = tmp / f"stop_{shuffle}.ckpt"
    t1.save_checkpoint(ckpt)
    cb2 = _callback()
    m2 = module()
    torch.manual_seed(1234)  # the global RNG of a new process is whatever it is
    t2 = trainer(callbacks=[cb2], max_epochs=EPOCHS)
    t2.fit(m2, *_loaders(shuffle), ckpt_path=str(ckpt))
    out["resumed"] = (m2, t2, cb2)
    return out


def _last_score(cb: SanityCheckCallback) -> float:
    entry = cb.history[-1]
    assert entry["epoch"] == EPOCHS - 1
    score = float(entry["score"])
    assert score == score  # not NaN: some layers' bounds are apart at this epoch
    return score


def test_shuffled_resume_differs_only_through_the_weights(tmp_path: Path) -> None:
    runs = _fit(True, tmp_path)
    (ma, ta, cba), (mb, tb, cbb) = runs["straight"], runs["resumed"]
    wa = torch.cat([p.flatten() for p in ma.parameters()])
    wb = torch.cat([p.flatten() for p in mb.parameters()])
    assert not torch.equal(wa, wb)  # another batch order in the resumed epoch
    sa, sb = _last_score(cba), _last_score(cbb)
    assert sa != sb
    # each logged score is the callback's pure function of that run's final weights
    for m, t, cb, logged in ((ma, ta, cba, sa), (mb, tb, cbb, sb)):
        fresh = _callback()
        fresh.setup(t, m, "fit")
        fresh.buffer = cb.buffer  # the same (unshuffled) validation images
        assert float(fresh.run(t, m).score) == logged


def test_unshuffled_resume_trains_the_same_weights_and_logs_the_same_score(
        tmp_path: Path) -> None:
    runs = _fit(False, tmp_path)
    (ma, _, cba), (mb, _, cbb) = runs["straight"], runs["resumed"]
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(pa, pb)
    assert _last_score(cba) == _last_score(cbb)
