"""What a manipulation does to classification (§2.1's 69.146 % → 68.744 % top-1, §2.2's
unchanged top-1/top-5), computed by ``manipulate --eval_data``, and the normalization the
manipulated file records for ``render-comparison``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sklearn.metrics import top_k_accuracy_score
from torch import nn

from lightning_fv.cli import main
from lightning_fv.data.embedded import photo_patches
from lightning_fv.manipulation import compare_predictions, load_manipulated
from lightning_fv.manipulation.io import read_manipulation_metadata
from lightning_fv.models import bundled_model


class _Shifted(nn.Module):
    """``base`` plus ``scale * relu(x[:, 0, 0, 0] − 0.5)`` on logit 0: identical wherever
    the first pixel is at most 0.5."""

    def __init__(self, base: nn.Module, scale: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x).clone()
        out[:, 0] = out[:, 0] + self.scale * torch.relu(x[:, 0, 0, 0] - 0.5)
        return out


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 7))


def test_compare_predictions_equals_sklearn_topk_and_counts_identical_outputs() -> None:
    base = _linear()
    other = _Shifted(base, 50.0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(203, 3, 4, 4, generator=g)
    y = torch.randint(0, 7, (203,), generator=g)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 203, 32)]
    other.train()
    res = compare_predictions(base, other, batches, topk=(1, 5))
    with torch.no_grad():
        a, b = base(x), other(x)
    labels = list(range(7))
    for name, out in (("original", a), ("manipulated", b)):
        for k in (1, 5):
            ref = top_k_accuracy_score(y.numpy(), out.numpy(), k=k, labels=labels)
            assert res[f"{name}/top{k}"] == pytest.approx(ref, abs=1e-12)
    assert res["delta_pp/top1"] == pytest.approx(
        100 * (res["manipulated/top1"] - res["original/top1"]), abs=1e-9)
    changed = x[:, 0, 0, 0] > 0.5
    assert res["n"] == 203
    assert res["identical_fraction"] == pytest.approx(float((~changed).float().mean()))
    assert res["same_top1_fraction"] == pytest.approx(
        float((a.argmax(1) == b.argmax(1)).float().mean()))
    assert res["max_abs_logit_change"] == pytest.approx(float((a - b).abs().max()), rel=1e-6)
    assert 0 < res["same_top1_fraction"] < 1  # the shift moves some top-1 answers
    assert other.training  # the mode is restored


def test_compare_predictions_rejects_k_beyond_outputs_and_empty_data() -> None:
    base = _linear()
    x, y = torch.rand(4, 3, 4, 4), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="topk 9 exceeds the models' 7 outputs"):
        compare_predictions(base, base, [(x, y)], topk=(1, 9))
    with pytest.raises(ValueError, match="got no images"):
        compare_predictions(base, base, [], topk=(1,))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        compare_predictions(base, base, [(x, y[:3])])


def test_manipulate_eval_data_writes_top1_top5_of_both_models(tmp_path: Path) -> None:
    """Silent units on block4 of the bundled CNN: the eval file's accuracies are the two
    models' on the photo-patch validation images, recomputed here."""
    out = tmp_path / "silent.safetensors"
    main(["manipulate", "--method", "silent", "--layer", "block4", "--n_natural_per_class", "4",
          "--image_size", "32", "--pattern", "random", "--eval_data", "photo_patches",
          "--eval_per_class", "6", "--eval_image_size", "32", "--eval_batch_size", "16",
          "--device", "cpu", "--output", str(out)])
    res = json.loads(out.with_suffix(".eval.json").read_text())
    base = bundled_model("photo_patches").eval()
    silent = load_manipulated(base, out)
    x, y = photo_patches("val", 6, 32)
    with torch.no_grad():
        a, b = base(x), silent(x)
    assert res["n"] == 60 and res["eval_split"] == "val" and res["method"] == "silent"
    for name, out_ in (("original", a), ("manipulated", b)):
        for k in (1, 5):
            ref = top_k_accuracy_score(y.numpy(), out_.numpy(), k=k, labels=list(range(10)))
            assert res[f"{name}/top{k}"] == pytest.approx(ref, abs=1e-12)
    assert res["identical_fraction"] == pytest.approx(
        int((a == b).all(1).sum()) / 60, abs=1e-12)
    # a second run into the same output is refused before any work
    with pytest.raises(FileExistsError, match="already exists"):
        from lightning_fv.commands.manipulation import manipulate

        manipulate(method="silent", layer="block4", output=str(out), eval_data="photo_patches")


def test_manipulated_file_records_normalization_and_render_comparison_reads_it(
        tmp_path: Path) -> None:
    from lightning_fv.commands.manipulation import render_comparison
    from lightning_fv.optvis.render import render_units
    from lightning_fv.utils.preprocess import normalized_input

    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    out = tmp_path / "silent.safetensors"
    main(["manipulate", "--method", "silent", "--layer", "block4", "--n_natural_per_class", "2",
          "--image_size", "32", "--pattern", "random", "--mean", json.dumps(mean),
          "--std", json.dumps(std), "--output", str(out)])
    meta = read_manipulation_metadata(out)
    assert meta["mean"] == pytest.approx(mean) and meta["std"] == pytest.approx(std)
    assert meta["num_classes"] is None
    png = tmp_path / "grid.png"
    render_comparison(str(out), units=["fc:0"], steps=2, image_size=32, device="cpu",
                      output=str(png), progress=False)
    values = json.loads(png.with_suffix(".json").read_text())["values_before"]
    # the top row is the base model rendered through the stored normalization with the
    # paper's renderer (preset "lucent", the default)
    base = bundled_model("photo_patches").eval()
    from lightning_fv.utils.preprocess import check_mean_std

    with normalized_input(base, check_mean_std(mean, std)):
        ref = render_units(base, ["fc:0"], thresholds=(2,), image_size=32, seed=0,
                           preset="lucent")
    assert values == pytest.approx(ref.values[2].tolist(), rel=1e-5)
    with pytest.raises(ValueError, match=r"mean=\[0.5, 0.5, 0.5\] differs from the mean="):
        render_comparison(str(out), units=["fc:0"], steps=1, image_size=32, device="cpu",
                          output=str(tmp_path / "g2.png"), mean=[0.5] * 3, std=std)


def test_silence_block_reads_natural_images_in_batches_exactly_as_from_memory() -> None:
    """An iterable of ``(images, labels)`` batches (a DataLoader over an ImageFolder at paper
    scale) sets the same bias as the same images held as one tensor."""
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_fv.manipulation import silence_block
    from lightning_fv.manipulation.silent import silent_modules

    model = bundled_model("photo_patches").eval()
    x, y = photo_patches("train", 3, 32)
    ref = silence_block(model, "block4", x, pattern="random", batch_size=7)
    for bias in ("max", "percentile"):
        a = silence_block(model, "block4", x, pattern="random", bias=bias)
        b = silence_block(model, "block4", DataLoader(TensorDataset(x, y), batch_size=4),
                          pattern="random", bias=bias)
        ma, mb = silent_modules(a)["block4.conv"], silent_modules(b)["block4.conv"]
        assert torch.equal(ma.delta.bias, mb.delta.bias)
        assert torch.equal(ma.delta.weight, mb.delta.weight)
        if bias == "max":
            with torch.no_grad():  # the images that set the bias: bit-identical outputs
                assert torch.equal(b(x), model(x))
    assert torch.equal(silent_modules(ref)["block4.conv"].delta.bias,
                       silent_modules(silence_block(model, "block4", list(x.split(5)),
                                                    pattern="random"))["block4.conv"].delta.bias)
    with pytest.raises(ValueError, match="needs natural images"):
        silence_block(model, "block4", [], pattern="random")
