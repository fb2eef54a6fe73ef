"""Shared test fixtures: the real datasets kept in the repository (tests/data/real)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The real datasets the tests read: test-only files, and links to the data shipped in the package
#: (tests/data/real/README.md). Part of the repository: a missing file is an error, never a skip.
REAL_DATA = REPO / "tests" / "data" / "real"
REAL_DATA_FILES = (
    "rmd17_ethanol/train.xyz", "rmd17_ethanol/test_MD.xyz", "rmd17_ethanol/isolated_atoms.xyz",
    "qm9_subset/qm9_random2000_seed0.extxyz", "qm7/qm7_first300.extxyz",
    "oc20_is2re_samples/is2re_bs3.extxyz", "oc20_is2re_samples/is2re_bs8.extxyz",
    "oc20_s2ef_single/oc20_single_atoms.json", "oxides_eos/oxides.db",
    "xu_kitchin_adsorption/structures.json", "xu_kitchin_adsorption/energies.json",
    "fixtures/schnetpack/test_qm9.db", "fixtures/schnetpack/test_ethanol.db", "fixtures/schnetpack/test_iso.db",
    "fixtures/schnetpack/test_ani1.db", "fixtures/schnetpack/ethanol_snip.xyz", "fixtures/nequip/aspirin.xyz",
)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Root of the real datasets (``tests/data/real``); fails if any of its files is missing."""
    missing = [name for name in REAL_DATA_FILES if not (REAL_DATA / name).is_file()]
    if missing:
        pytest.fail(f"real test data missing from the repository under {REAL_DATA}: {', '.join(missing)}", pytrace=False)
    return REAL_DATA


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
