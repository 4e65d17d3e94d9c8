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
