"""The renderer of the detector's trajectories is a named preset (App. C.1 vs C.2)."""

from __future__ import annotations

import pytest
import torch

from lightning_fv.data.trajectories import TrajectoryDataModule, render_trajectories
from lightning_fv.models import bundled_model
from lightning_fv.optvis.render import log_spaced_steps, render_units


def test_render_trajectories_renders_with_the_named_preset() -> None:
    model = bundled_model("photo_patches").eval()
    kw = dict(steps=4, n_log_steps=2, image_size=16, batch_size=8)
    units = ["block4:1", "block4:2"]  # closed everywhere on the grey start: redirection moves them
    lucent = render_trajectories(model, units, 1, preset="lucent", **kw)
    lucid = render_trajectories(model, units, 1, **kw)
    ref = render_units(model, units, thresholds=(4,), image_size=16, batch_size=8, seed=[0, 0],
                       transforms="standard", record=log_spaced_steps(4, 2), record_grads=False,
                       preset="lucent").trajectory.images
    assert torch.equal(lucent, ref.transpose(0, 1).reshape(-1, 3, 16, 16).clamp(0, 1))
    assert not torch.equal(lucent, lucid)


def test_datamodule_preset_enters_the_cache_key_and_unknown_presets_fail(tmp_path) -> None:
    common = dict(units=["fc:0", "fc:1"], steps=2, n_log_steps=2, image_size=16,
                  trajectories_per_unit=1, n_natural_per_class=2, cache_dir=str(tmp_path))
    lucid = TrajectoryDataModule(**common)
    lucent = TrajectoryDataModule(preset="lucent", **common)
    model = bundled_model("photo_patches")
    s_lucid, s_lucent = lucid.settings(model, ["fc:0"]), lucent.settings(model, ["fc:0"])
    assert "preset" not in s_lucid and s_lucent["preset"] == "lucent"
    assert lucid.cache_key(s_lucid) != lucent.cache_key(s_lucent)
    with pytest.raises(ValueError, match="unknown preset 'olah'"):
        TrajectoryDataModule(preset="olah", **common)


def test_sharded_cache_renders_groups_lazily_and_resumes(tmp_path, monkeypatch) -> None:
    """``shard_units``: one cache file per group of units, read lazily; the images are the
    renders of those units (no augmentation); a lost group is rendered again, alone."""
    import lightning_fv.data.trajectories as traj
    from lightning_fv.data.trajectories import ShardedImages

    units = [f"fc:{i}" for i in range(5)]
    common = dict(units=units, steps=3, n_log_steps=2, image_size=16, trajectories_per_unit=2,
                  n_natural_per_class=2, cache_dir=str(tmp_path), augment_fraction=0.0,
                  test_fraction=0.4, render_batch_size=8)
    calls: list[list[str]] = []
    real = traj.render_trajectories

    def counting(model, us, *a, **kw):
        calls.append(list(us))
        return real(model, us, *a, **kw)

    monkeypatch.setattr(traj, "render_trajectories", counting)
    dm = TrajectoryDataModule(shard_units=2, **common)
    dm.setup()
    assert isinstance(dm.vis_train, ShardedImages) and isinstance(dm.vis_test, ShardedImages)
    assert [len(c) for c in calls] == [2, 1, 2]  # 3 train units in groups of 2, then 2 test
    files = sorted(p.name for p in dm.cache_path.iterdir())
    assert files == ["test-00000.safetensors", "train-00000.safetensors",
                     "train-00001.safetensors"]
    # every image equals the unit's own render (float16 as cached), in unit order
    model = bundled_model("photo_patches").eval()
    ref = real(model, dm.train_units, 2, 3, 2, 16, "standard", 8).half().float()
    assert len(dm.vis_train) == len(dm.train_units) * 2 * 2 == ref.shape[0]
    got = torch.stack([dm.vis_train[i] for i in range(len(dm.vis_train))])
    assert torch.equal(got, ref)
    assert torch.equal(dm.vis_train[-1], ref[-1])
    with pytest.raises(IndexError, match="out of range"):
        dm.vis_train[len(dm.vis_train)]
    # labels: naturals 1, then visualizations 0
    n_nat = len(dm.natural_train)
    assert int(dm.train_set[0][1]) == 1 and int(dm.train_set[n_nat][1]) == 0
    assert len(dm.train_set) == n_nat + len(dm.vis_train)
    # a second module finds every group; a removed group is rendered again, alone
    (dm.cache_path / "train-00001.safetensors").unlink()
    calls.clear()
    again = TrajectoryDataModule(shard_units=2, **common)
    again.setup()
    assert calls == [dm.train_units[2:]] and not again.loaded_from_cache
    calls.clear()
    third = TrajectoryDataModule(shard_units=2, **common)
    third.setup()
    assert calls == [] and third.loaded_from_cache
    batch = next(iter(third.train_dataloader()))
    assert batch[0].shape[1:] == (3, 16, 16)
    with pytest.raises(ValueError, match="shard_units must be >= 1"):
        TrajectoryDataModule(shard_units=0, **common)
