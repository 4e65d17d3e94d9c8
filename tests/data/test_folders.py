"""The class filter of ``TorchvisionDataModule`` / :func:`filter_classes` (App. C.3 of
`dont-trust-your-eyes…` picks ten ImageNet classes and keeps label ``c`` = output ``c``)
on image folders written to ``tmp_path`` and on a torchvision data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_fv.data import TorchvisionDataModule
from lightning_fv.data.folders import filter_classes, image_folder, load_images

C3_CLASSES = [20, 71, 102, 106, 121, 270, 435, 614, 700, 860]


def _colour(c: int) -> tuple[int, int, int]:
    """A colour that identifies class ``c`` (0 ≤ c < 1000) exactly after PNG round trip."""
    return (c % 10 * 25, c // 10 % 10 * 25, c // 100 * 25)


def _class_folders(root: Path, n_classes: int, per_class: dict[int, int] | None = None,
                   split: str = "val") -> None:
    """``root/<split>/n{c:08d}/*.png``: sorted synset-like names, so folder ``c`` is label
    ``c``; every image of class ``c`` is the solid colour :func:`_colour` ``(c)``."""
    for c in range(n_classes):
        folder = root / split / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range((per_class or {}).get(c, 1)):
            Image.fromarray(np.full((6, 6, 3), _colour(c), dtype=np.uint8)).save(
                folder / f"{i}.png")


def _decode(x: torch.Tensor) -> list[int]:
    """The class whose colour each image ``(N, 3, H, W)`` has."""
    rgb = (x[:, :, 0, 0] * 255).round().long() // 25
    return (rgb[:, 0] + 10 * rgb[:, 1] + 100 * rgb[:, 2]).tolist()


def test_class_filter_keeps_exactly_c3s_ten_classes_with_their_original_labels(
        tmp_path: Path) -> None:
    counts = {c: 2 for c in C3_CLASSES} | {0: 3, 999: 1}
    _class_folders(tmp_path, 1000, counts, "val")
    _class_folders(tmp_path, 1000, None, "train")
    dm = TorchvisionDataModule(str(tmp_path), image_size=4, batch_size=7, num_workers=0,
                               class_indices=C3_CLASSES)
    dm.setup("validate")
    x, y = load_images(dm.val_set)
    assert y.tolist() == [c for c in C3_CLASSES for _ in range(2)]  # folder order, 2 each
    assert _decode(x) == y.tolist()  # each image is its own class folder's: label c = c
    xb, yb = next(iter(dm.val_dataloader()))
    assert yb.tolist() == y[:7].tolist() and torch.equal(xb, x[:7])
    assert sorted(set(load_images(dm.train_set)[1].tolist())) == C3_CLASSES
    # without the filter every class is served
    full = TorchvisionDataModule(str(tmp_path), image_size=4, num_workers=0)
    full.setup("validate")
    assert len(full.val_set) == 1000 + 10 + 2 and len(dm.val_set) == 20


def test_class_filter_works_on_a_torchvision_dataset_and_caps_per_class() -> None:
    from torchvision.datasets import FakeData
    from torchvision.transforms import ToTensor

    ds = FakeData(size=40, image_size=(3, 4, 4), num_classes=5, transform=ToTensor(),
                  random_offset=3)
    labels = [int(ds[i][1]) for i in range(40)]
    sub = filter_classes(ds, [4, 1], per_class=2)
    want = [i for i, t in enumerate(labels) if t in (1, 4)]
    want = [i for i in want if [labels[j] for j in want if j <= i].count(labels[i]) <= 2]
    assert sub.indices == want and len(want) == 4
    assert [int(sub[k][1]) for k in range(4)] == [labels[i] for i in want]  # labels kept
    assert all(torch.equal(sub[k][0], ds[i][0]) for k, i in enumerate(want))


@pytest.mark.parametrize(("classes", "message"), [
    ([3, 7], r"classes \[7\] are not labels .* 5 classes, valid labels 0..4"),
    ([-1], r"non-negative integer labels, got \[-1\]"),
    ([2, 2], r"classes lists \[2\] more than once"),
    ([], "classes is empty"),
])
def test_class_filter_names_the_bad_class_and_the_valid_ones(
        tmp_path: Path, classes: list[int], message: str) -> None:
    _class_folders(tmp_path, 5)
    with pytest.raises(ValueError, match=message):
        image_folder(tmp_path, 4, "val", classes=classes)


def test_class_filter_refuses_a_class_without_images_in_the_split() -> None:
    class ThreeClasses(torch.utils.data.Dataset):
        """Classes a, b, c; only a and b have samples (labels read from ``targets``)."""

        classes = ["a", "b", "c"]
        targets = [0, 1, 0]

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            raise AssertionError("the filter reads labels from targets, not samples")

    with pytest.raises(ValueError, match=r"classes \[2\] have no images in split val"):
        filter_classes(ThreeClasses(), [0, 2], name="split val")
    assert filter_classes(ThreeClasses(), [0]).indices == [0, 2]


def test_missing_image_folder_names_the_folder_and_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere/val.*\{train,val\}/<class>"):
        image_folder(tmp_path / "nowhere", 4, "val")
