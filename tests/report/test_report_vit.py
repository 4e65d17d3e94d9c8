"""The audit report on the bundled tiny ViT: token layers are named and counted in
feature channels, every section runs."""

from __future__ import annotations

from lightning_fv.data import photo_patches
from lightning_fv.models import bundled_model
from lightning_fv.report import audit, write_report


def test_audit_of_the_bundled_vit_counts_channels_of_token_layers(tmp_path):
    net = bundled_model("photo_patches_vit")
    x, y = photo_patches("val", 4, 64)
    res = audit(net, (x, y), layers=["blocks.1", "blocks.3"], class_layer="head",
                units_per_layer=2, steps=2, path_images=2, path_steps=2, pgd_eps=0.5,
                pgd_steps=1, robust_images=8, max_images=40, progress=False)
    status = {name: sec.status for name, sec in res.sections.items()}
    assert status == {"model": "ok", "visualizations": "ok", "sanity": "ok",
                      "detector": "skipped", "path_linearity": "ok", "robustness": "ok"}
    rows = {r["layer"]: r for r in res.sections["model"].data["layers"]}
    # (N, C) = (65, 96): 64 patch tokens and a CLS token of width 96
    assert rows["blocks.1"]["shape"] == "(65, 96)"
    assert rows["blocks.1"]["units"] == 96
    assert rows["blocks.1"]["layout"].startswith("tokens(prefix=1, grid=8x8)")
    assert rows["head"]["units"] == 10 and rows["head"]["layout"] == "vector (C,)"
    units = res.sections["visualizations"].settings["units"]
    assert len(units) == 4 and all(0 <= int(u.split(":")[1]) < 96 for u in units)
    html = write_report(res, tmp_path).html.read_text()
    assert "tokens(prefix=1, grid=8x8)" in html
