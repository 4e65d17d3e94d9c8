"""Shared fixtures: tiny models that run in milliseconds on a CPU."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """conv(3→4) → relu → conv(4→6) → relu → mean pool → fc(6→5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.bn(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    # two threads (the CI machine's cores) unless OMP_NUM_THREADS asks for fewer: on a shared
    # machine, and under mutmut, whose forked workers hang in a multi-threaded torch
    torch.set_num_threads(min(2, int(os.environ.get("OMP_NUM_THREADS", "2"))))
