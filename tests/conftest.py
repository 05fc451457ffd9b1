"""Shared test setup: one CPU thread (the operations are small, and threads only contend on a
shared 2-core machine) and a fixed seed per test."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
