"""Shared test fixtures: paths to the real datasets in ../shared/data (beside the clone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FRAMEAVG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real datasets (``../shared/data``); tests needing it skip if it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set FRAMEAVG_SHARED_DATA)")
    return SHARED_DATA


def pytest_addoption(parser):
    parser.addoption("--fuzz-structures", type=int, default=280,
                     help="structures in the frame-averaging fuzz test (the slow variant: 10000)")
    parser.addoption("--fuzz-seed", type=int, default=0, help="seed of the frame-averaging fuzz test")


@pytest.fixture(scope="session")
def fuzz_settings(request) -> tuple[int, int]:
    """(number of structures, seed) of the frame-averaging fuzz test."""
    return request.config.getoption("--fuzz-structures"), request.config.getoption("--fuzz-seed")
