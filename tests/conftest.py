"""Shared fixtures: the real data in ``../shared/data`` (override with PYG_MLIC_DATA)."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("PYG_MLIC_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"real data folder not found at {d} (set PYG_MLIC_DATA)")
    return d


@pytest.fixture(autouse=True)
def _seed():
    import torch
    torch.manual_seed(0)
