"""The audit sharded across processes: ``lightning-fv audit --devices 2`` (Lightning Fabric,
CPU/gloo DDP, the command started again by Lightning's launcher) gives the same report as
one process, each process having done its own share of the renders, sanity-check layers
and paths; and the chunk-sharding helper on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_fv.utils.distributed import map_chunks, shard, unshard

CLI = str(Path(sys.executable).with_name("lightning-fv"))
ARGS = ["audit", "--config", "examples/configs/audit_photo_patches.yaml", "--steps", "3",
        "--units_per_layer", "3", "--layers", "[block2, block4, fc]", "--path_images", "2",
        "--path_steps", "3", "--pgd_steps", "1", "--robust_images", "8", "--max_images", "40",
        "--datamodule.init_args.n_val_per_class", "4", "--datamodule.init_args.size", "32",
        "--batch_size", "2", "--device", "cpu", "--progress", "false"]
ROOT = Path(__file__).parents[2]


def _audit(out: Path, devices: int) -> dict:
    # one thread per process in both runs, so the two runs do the same float arithmetic
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([CLI, *ARGS, "--devices", str(devices), "--output_dir", str(out)],
                          cwd=ROOT, env=env, timeout=600, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    written = sorted(out.glob("version_*"))
    assert [p.name for p in written] == ["version_0"]  # rank one wrote nothing
    return json.loads((written[0] / "report.json").read_text())


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    tmp = tmp_path_factory.mktemp("sharded")
    return _audit(tmp / "one", 1), _audit(tmp / "two", 2)


@pytest.mark.slow
def test_two_processes_split_the_renders_layers_and_paths(reports: tuple[dict, dict]) -> None:
    one, two = reports
    assert (one["meta"]["world_size"], two["meta"]["world_size"]) == (1, 2)
    units = one["sections"]["visualizations"]["settings"]["units"]
    assert len(units) == 9
    # chunks of batch_size=2 units dealt round-robin: chunks 0, 2, 4 on rank 0, 1, 3 on rank 1
    chunks = [units[i:i + 2] for i in range(0, 9, 2)]
    expected = [sum(chunks[0::2], []), sum(chunks[1::2], [])]
    assert two["sections"]["visualizations"]["data"]["shards"] == expected
    assert one["sections"]["visualizations"]["data"]["shards"] == [units]
    sanity = two["sections"]["sanity"]["data"]["shards"]
    assert sanity["layers"] == [["block2", "block4"], ["fc"]]  # ceil(3 / 2) layers each
    classes = [f"fc:{c}" for c in range(10)]
    assert sanity["renders"] == [sum([classes[i:i + 2] for i in (0, 4, 8)], []),
                                 sum([classes[i:i + 2] for i in (2, 6)], [])]
    paths = one["sections"]["path_linearity"]["settings"]["units"]
    assert two["sections"]["path_linearity"]["data"]["shards"] == [paths[0::2], paths[1::2]]


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one_process(reports: tuple[dict, dict]) -> None:
    one, two = reports
    for name in ("visualizations", "sanity", "path_linearity", "robustness"):
        a, b = one["sections"][name], two["sections"][name]
        assert (a["status"], b["status"]) == ("ok", "ok"), (a["error"], b["error"])
        assert a["numbers"].keys() == b["numbers"].keys()
        assert a["numbers"] == b["numbers"], name  # exactly: same chunks, same arithmetic
    assert len(one["sections"]["sanity"]["numbers"]) > 10


def test_map_chunks_in_one_process_keeps_order_and_reports_shards() -> None:
    calls: list[list[int]] = []

    def square(chunk: list[int]) -> list[int]:
        calls.append(chunk)
        return [x * x for x in chunk]

    out, shards = map_chunks(square, list(range(7)), None, 3)
    assert out == [0, 1, 4, 9, 16, 25, 36]
    assert calls == [[0, 1, 2], [3, 4, 5], [6]] and shards == [list(range(7))]


def test_map_chunks_names_a_function_that_drops_results() -> None:
    with pytest.raises(ValueError, match="returned 1 results for a chunk of 2 items"):
        map_chunks(lambda c: c[:1], [1, 2, 3], None, 2)


def test_shard_and_unshard_are_inverse_for_any_world_size() -> None:
    items = list("abcdefg")
    for size in (1, 2, 3, 8):
        parts = [shard(items, type("D", (), {"global_rank": r, "world_size": size})())
                 for r in range(size)]
        assert parts[0] == items[0::size]
        assert unshard(parts) == items


def _callback_run(out: Path, devices: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(ROOT)}
    script = Path(__file__).with_name("audit_ddp_callback_script.py")
    proc = subprocess.run([sys.executable, str(script), str(out), str(devices)], env=env,
                          cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"result_rank{r}.pt", weights_only=False) for r in range(devices)]


@pytest.mark.slow
def test_callback_under_ddp_shards_and_audits_rank_zeros_images(tmp_path: Path) -> None:
    ranks = _callback_run(tmp_path / "two", 2)
    assert [r["world_size"] for r in ranks] == [2, 2]
    # rank zero wrote the one report; every rank holds the same gathered numbers
    assert len(ranks[0]["reports"]) == 1 and ranks[1]["reports"] == []
    assert sorted(p.name for p in (tmp_path / "two" / "audit").iterdir()) == ["version_0"]
    assert ranks[0]["numbers"] == ranks[1]["numbers"]
    # 4 units in chunks of batch_size=1: units 0 and 2 on rank zero, 1 and 3 on rank one
    shards = ranks[0]["shards"]
    assert [len(s) for s in shards] == [2, 2]
    assert [shards[0][0], shards[1][0], shards[0][1], shards[1][1]] == sorted(
        sum(shards, []), key=lambda u: (u.split(":")[0] != "block2", int(u.split(":")[1])))
    # the audit is that of rank zero's validation shard (DistributedSampler: items 0, 2, …)
    sys.path.insert(0, str(Path(__file__).parents[1] / "callbacks"))
    from audit_ddp_callback_script import KWARGS
    from cb_common import data, trained_module

    from lightning_fv.report import audit

    x, y = data()
    kw = {k: v for k, v in KWARGS.items() if k != "module"}
    torch.set_num_threads(1)
    try:
        ref = audit(trained_module().model.eval(), (x[0::2], y[0::2]), **kw)
    finally:
        torch.set_num_threads(2)
    for name, numbers in ranks[0]["numbers"].items():
        assert numbers.keys() == ref.sections[name].numbers.keys(), name
        for key, v in numbers.items():
            assert v == pytest.approx(ref.sections[name].numbers[key], rel=1e-5, abs=1e-6), key
