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


@pytest.fixture
def forget_plugins(tmp_path_factory):
    """Call it to drop what plugin modules registered (models, readers) and the modules imported
    from the tests' temporary folders, as a new process would not have them; also called at the
    end, so no other test sees them."""
    import sys

    from frameavg.data.readers import registry
    from frameavg.models import MODELS

    registry.load_readers()  # the built-in readers register once per process: keep them
    saved = [(table, dict(table)) for table in (MODELS, registry.READERS, registry._ALIASES)]
    base = tmp_path_factory.getbasetemp().resolve()

    def forget():
        for table, snapshot in saved:
            table.clear()
            table.update(snapshot)
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if file and Path(file).resolve().is_relative_to(base):
                del sys.modules[name]

    yield forget
    forget()
