"""Two-process CPU (gloo) DDP predict: queries sharded, gathered in order, written once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_invariant_script.py")


def _run(out: Path, devices: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]),
                                                        str(Path(__file__).parent)])}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), str(devices)], env=env,
                          timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "result_rank1.pt").exists()
    return torch.load(out / "result_rank0.pt", weights_only=False)


@pytest.mark.slow  # ~60 s on 2 shared cores (two process launches)
def test_two_process_predict_equals_one_process(tmp_path):
    one = _run(tmp_path / "one", 1)
    two = _run(tmp_path / "two", 2)
    assert two["world_size"] == 2
    r1, r2 = one["results"], two["results"]
    assert r2["index"].tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(r2["samples"], r1["samples"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r2["l2"], r1["l2"], rtol=1e-4, atol=1e-6)
    assert (tmp_path / "two" / "sets" / "invariant_sets.safetensors").is_file()
