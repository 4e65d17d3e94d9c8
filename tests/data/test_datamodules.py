"""``DigitsDataModule`` and ``TorchvisionDataModule`` against sklearn's digits and a tiny
image folder written to ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_fv.data import DigitsDataModule, TorchvisionDataModule


def test_digits_datamodule_serves_sklearn_digits_in_a_fixed_split() -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    dm = DigitsDataModule(batch_size=100, size=8, seed=3)
    assert dm.num_classes == 10 and dm.classes[7] == "7"
    dm.setup("fit")
    xt, yt = dm.train_set.tensors
    xv, yv = dm.val_set.tensors
    assert (len(yt), len(yv)) == (1797 - 359, 359)  # round(0.2 · 1797) held out
    # at the native 8×8 size each image is sklearn's, divided by 16, in all three channels
    ref = torch.from_numpy(d.images).float() / 16
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(xv, ref[perm[:359]][:, None].expand(-1, 3, -1, -1))
    assert torch.equal(yv, torch.from_numpy(d.target)[perm[:359]])
    assert torch.equal(yt, torch.from_numpy(d.target)[perm[359:]])
    # validation keeps its order, training is shuffled the same way every epoch start
    xb, yb = next(iter(dm.val_dataloader()))
    assert torch.equal(yb, yv[:100]) and xb.shape == (100, 3, 8, 8)
    first = next(iter(dm.train_dataloader()))[1]
    assert torch.equal(first, next(iter(dm.train_dataloader()))[1])
    assert not torch.equal(first, yt[:100])
    assert DigitsDataModule(size=32).train_dataloader().dataset.tensors[0].shape[1:] == \
        (3, 32, 32)


def _image_folder(root: Path) -> dict[str, list[tuple[str, tuple[int, int, int]]]]:
    """train/ and val/ with classes ``cat`` and ``ant`` of 6×4 solid-colour PNGs whose
    left 2 columns are black (the centre crop of 4 removes them); one greyscale image."""
    files = {"train": [("cat", (255, 0, 0)), ("ant", (0, 255, 0)), ("cat", (0, 0, 255))],
             "val": [("ant", (51, 102, 153))]}
    for split, items in files.items():
        for i, (cls, rgb) in enumerate(items):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            arr = np.zeros((4, 6, 3), dtype=np.uint8)
            arr[:, 1:5] = rgb  # columns 1..4 coloured, 0 and 5 black
            Image.fromarray(arr).save(folder / f"{i}.png")
    Image.fromarray(np.full((4, 4), 200, dtype=np.uint8), mode="L").save(
        root / "train" / "ant" / "grey.png")
    return files


def test_image_folder_is_resized_centre_cropped_rgb_in_unit_range(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    dm = TorchvisionDataModule(str(tmp_path), "ImageFolder", image_size=4, batch_size=8,
                               num_workers=0)
    dm.setup("fit")
    assert dm.train_set.classes == ["ant", "cat"]  # sorted folder names
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (1, 3, 4, 4) and y.tolist() == [0]
    torch.testing.assert_close(x[0], torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1).expand(3, 4, 4))
    # every pixel of the crop is the image's colour: the black columns are cut off
    got = sorted((tuple(round(v * 255) for v in img[:, 0, 0].tolist()), int(lbl))
                 for img, lbl in dm.train_set)
    assert got == [((0, 0, 255), 1), ((0, 255, 0), 0), ((200, 200, 200), 0), ((255, 0, 0), 1)]
    assert all(torch.equal(img, img[:, :1, :1].expand(3, 4, 4)) for img, _ in dm.train_set)
    assert len(dm.train_set) == 4 and dm.test_dataloader().dataset is dm.val_set


def test_other_torchvision_datasets_get_train_flag_and_no_download(monkeypatch,
                                                                  tmp_path: Path) -> None:
    import torchvision

    calls: list[dict] = []

    class FakeSet(torch.utils.data.Dataset):
        def __init__(self, root: str, train: bool, transform, download: bool) -> None:
            calls.append(dict(root=root, train=train, download=download))
            self.transform = transform

        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            img = Image.fromarray(np.full((8, 8), 255 * i, dtype=np.uint8), mode="L")
            return self.transform(img), i

    monkeypatch.setattr(torchvision.datasets, "FakeSet", FakeSet, raising=False)
    dm = TorchvisionDataModule(str(tmp_path), "FakeSet", image_size=4, batch_size=2,
                               num_workers=0)
    dm.setup()
    assert calls == [dict(root=str(tmp_path), train=True, download=False),
                     dict(root=str(tmp_path), train=False, download=False)]
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 4, 4) and torch.equal(x[1], torch.ones(3, 4, 4))
    assert x[0].abs().max() == 0 and y.tolist() == [0, 1]
    with pytest.raises(ValueError, match="unknown torchvision dataset 'NoSuchSet'"):
        TorchvisionDataModule(str(tmp_path), "NoSuchSet").setup()
