"""Fixtures of the invariant-set tests (helpers live in ``_invariant_helpers``)."""

from __future__ import annotations

import pytest
import torch
from _invariant_helpers import TinyClassifier, make_pipeline

from lightning_fv.diffusion import LatentDiffusionPipeline


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only add contention on shared cores
    yield
    torch.set_num_threads(n)


@pytest.fixture
def pipe() -> LatentDiffusionPipeline:
    return make_pipeline()


@pytest.fixture
def clf() -> TinyClassifier:
    torch.manual_seed(1)
    return TinyClassifier().eval()
