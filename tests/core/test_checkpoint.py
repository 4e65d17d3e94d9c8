"""The one checkpoint reader: formats, Lightning checkpoints, prefixes and clear errors."""

from __future__ import annotations

import pickle

import lightning as L
import pytest
import torch
from safetensors.torch import save_file

from lightning_fv.utils import CheckpointError, UnsafeCheckpointError, load_state_dict
from lightning_fv.utils.checkpoint import (
    checkpoint_metadata,
    detect_format,
    read_checkpoint,
    strip_prefixes,
)


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "fc.bias": torch.randn(5)}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_round_trip_keeps_tensors_and_metadata(tmp_path):
    state = _state()
    save_file(state, str(tmp_path / "w.safetensors"), metadata={"image_size": "64"})
    ck = read_checkpoint(tmp_path / "w.safetensors")
    assert ck.format == "safetensors" and _same(ck.state_dict, state)
    assert ck.metadata == {"image_size": "64"}
    assert checkpoint_metadata(tmp_path / "w.safetensors") == {"image_size": "64"}


@pytest.mark.parametrize("zipped", [True, False])
def test_torch_save_round_trip_in_zip_and_legacy_format(tmp_path, zipped):
    state = _state(1)
    torch.save(state, tmp_path / "w.pt", _use_new_zipfile_serialization=zipped)
    ck = read_checkpoint(tmp_path / "w.pt")
    assert ck.format == ("torch-zip" if zipped else "torch-pickle")
    assert _same(ck.state_dict, state) and ck.key is None


def test_the_format_comes_from_the_content_not_the_suffix(tmp_path):
    state = _state(2)
    save_file(state, str(tmp_path / "w.bin"))
    torch.save(state, tmp_path / "w.safetensors")  # a misnamed torch.save file
    assert detect_format(tmp_path / "w.bin") == "safetensors"
    assert detect_format(tmp_path / "w.safetensors") == "torch-zip"
    assert _same(load_state_dict(tmp_path / "w.safetensors"), state)


def test_lightning_ckpt_yields_its_state_dict_without_the_module_prefix(tmp_path):
    class Wrapped(L.LightningModule):
        def __init__(self, width: int = 3) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = torch.nn.Linear(width, 2)

    m = Wrapped()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_steps=0,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(m)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ck = read_checkpoint(tmp_path / "last.ckpt")
    assert ck.key == "state_dict"
    assert sorted(ck.state_dict) == ["bias", "weight"]
    assert torch.equal(ck.state_dict["weight"], m.model.weight.detach())
    assert ck.extra["hyper_parameters"]["width"] == 3


def test_prefixes_are_stripped_only_when_every_key_has_them(tmp_path):
    state = _state(3)
    nested = {f"module._orig_mod.{k}": v for k, v in state.items()}
    torch.save({"model": nested, "opt": {}}, tmp_path / "ddp.pt")
    assert _same(load_state_dict(tmp_path / "ddp.pt"), state)
    # a mixed state dict (model.* and ema.*) keeps its names
    mixed = {"model.w": torch.ones(1), "ema.w": torch.zeros(1)}
    assert sorted(strip_prefixes(mixed)) == ["ema.w", "model.w"]
    # prefixes=() keeps every key as written
    torch.save({f"backbone.{k}": v for k, v in state.items()}, tmp_path / "bb.pt")
    assert sorted(load_state_dict(tmp_path / "bb.pt", prefixes=())) == [
        "backbone.conv.weight", "backbone.fc.bias"]


def test_key_selects_an_entry_and_a_missing_key_lists_the_entries(tmp_path):
    ema, raw = _state(4), _state(5)
    torch.save({"model": raw, "ema": ema, "opt": {"lr": 1.0}}, tmp_path / "release.pt")
    assert _same(load_state_dict(tmp_path / "release.pt", key="ema"), ema)
    assert _same(load_state_dict(tmp_path / "release.pt"), raw)  # default: "model"
    with pytest.raises(CheckpointError, match=r"no entry 'weights'.*\['ema', 'model', 'opt'\]"):
        load_state_dict(tmp_path / "release.pt", key="weights")


def test_truncated_files_give_a_clear_error_in_every_format(tmp_path):
    state = _state(6)
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    for name, fmt in (("w.safetensors", "safetensors"), ("w.pt", "torch-zip"),
                      ("old.pt", "torch-pickle")):
        data = (tmp_path / name).read_bytes()
        bad = tmp_path / f"cut_{name}"
        bad.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError) as info:
            load_state_dict(bad)
        msg = str(info.value)
        assert str(bad) in msg and f"format {fmt}" in msg, msg
        assert "weights_only" not in msg
        assert "truncated or corrupted" in msg or "refused" in msg


def test_garbage_and_non_state_dict_files_name_file_format_and_expectation(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all" * 4)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(junk)
    msg = str(info.value)
    assert str(junk) in msg and "match no known format" in msg
    assert "expected a .safetensors file, a torch.save file" in msg
    assert "weights_only" not in msg
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match=r"holds a Tensor, expected a dict of tensors"):
        load_state_dict(tmp_path / "tensor.pt")
    torch.save({"hyper_parameters": {"lr": 0.1}, "epoch": 3}, tmp_path / "hp.pt")
    with pytest.raises(CheckpointError, match=r"non-tensor values at \['epoch', "
                                              r"'hyper_parameters'\]"):
        load_state_dict(tmp_path / "hp.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt' does not exist"):
        load_state_dict(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a torch-zip file; metadata needs"):
        checkpoint_metadata(tmp_path / "tensor.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pickle_with_arbitrary_objects_is_refused_and_never_run(tmp_path, capsys, protocol):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f, protocol=protocol)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_dict(path)
    assert isinstance(info.value, pickle.UnpicklingError)  # what callers caught before
    msg = str(info.value)
    assert "refused checkpoint" in msg and str(path) in msg and "format torch-pickle" in msg
    assert "weights_only" not in msg
    if protocol == 2:
        assert "Unsupported global: GLOBAL print" in msg
    assert "pwned" not in capsys.readouterr().out


def test_registry_builds_by_name_and_loads_through_the_reader(tmp_path):
    from lightning_fv.manipulation.detector_net import DetectorCNN, save_detector
    from lightning_fv.models import build_model, list_models, save_small_cnn
    from lightning_fv.models.small_cnn import SmallCNN

    assert {"bundled", "detector", "lightningdit", "sae", "small_cnn", "vavae"} <= set(
        list_models())
    m = SmallCNN(num_classes=4, widths=(4, 5, 6, 7)).eval()
    save_small_cnn(m, tmp_path / "m.safetensors")
    rebuilt = build_model("small_cnn", checkpoint_path=str(tmp_path / "m.safetensors"))
    assert rebuilt.fc.out_features == 4 and torch.equal(rebuilt.fc.weight, m.fc.weight)
    det = DetectorCNN(32)
    save_detector(det, tmp_path / "d.safetensors")
    again = build_model("detector", checkpoint_path=str(tmp_path / "d.safetensors"))
    assert again.image_size == 32 and torch.equal(again.fc.weight, det.fc.weight)
    dit = build_model("lightningdit:LightningDiT-B/2", release_options=False, depth=1,
                      num_classes=3)
    assert dit.config["hidden_size"] == 768 and dit.config["depth"] == 1
    torch.save({"model": {f"module.{k}": v for k, v in dit.state_dict().items()}},
               tmp_path / "dit.pt")  # no "ema" entry: the reader's default entry is used
    dit2 = build_model("lightningdit", checkpoint_path=str(tmp_path / "dit.pt"), **dit.config)
    assert torch.equal(dit2.pos_embed, dit.pos_embed)


def test_registry_unknown_names_and_arguments_list_what_is_valid():
    from lightning_fv.models import build_model

    with pytest.raises(KeyError, match=r"closest names: \['small_cnn'"):
        build_model("smal_cnn")
    with pytest.raises(TypeError, match=r"model 'bundled' does not take \['num_classes'\]"):
        build_model("bundled:digits", num_classes=3)
