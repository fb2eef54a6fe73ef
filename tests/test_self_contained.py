"""The repository tests itself: no file reads data from outside it (the real data the tests use is
in tests/data/real and in the package's shipped data), and every data path a config names exists.
.ci/run runs the suite in a fresh clone with nothing beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REAL_DATA, REAL_DATA_FILES
from frameavg.data.readers import resolve_path

REPO = Path(__file__).resolve().parents[1]
# Written in pieces so that this file, which looks for them, does not itself contain them.
OUTSIDE = ("../" + "shared", "shared" + "/data", "FRAMEAVG_" + "SHARED_DATA", "DESIGN" + ".md")


def _text_files():
    for folder in ("src", "tests", "configs", "benchmarks", "docs", "scripts"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.is_file() and path.suffix in {".py", ".yaml", ".md", ".txt", ".sh", ""} and path != Path(__file__) \
                    and not any(part.endswith(".egg-info") or part == "__pycache__" for part in path.parts):
                yield path
    yield REPO / "README.md"
    yield REPO / "Makefile"


def test_nothing_points_outside_the_repository():
    found = []
    for path in _text_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        found += [f"{path.relative_to(REPO)}: {word}" for word in OUTSIDE if word in text]
    assert not found, found


def test_the_real_test_data_is_in_the_repository():
    assert REAL_DATA.is_relative_to(REPO)
    for name in REAL_DATA_FILES:
        assert (REAL_DATA / name).is_file(), name
        assert (REAL_DATA / name).resolve().is_relative_to(REPO), name  # links stay inside
    for folder in {name.split("/")[0] for name in REAL_DATA_FILES} - {"fixtures"}:
        assert {p.name for p in (REAL_DATA / folder).iterdir()} & {"LICENSE", "LICENSE.md"}, folder
    for folder in ("schnetpack", "nequip"):
        assert (REAL_DATA / "fixtures" / folder / "LICENSE").is_file()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_config_data_is_shipped_or_named_for_the_user(path):
    """Each data path of a config is shipped data (it exists), a placeholder the config's
    comment tells the user to replace (the paper's OC20 LMDBs, QM7-X, the full QM9), or data its
    comment tells the user to generate (`frameavg data generate-...`)."""
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    for key in ("train", "val", "test"):
        value = data.get(key)
        if isinstance(value, str) and value.startswith("shipped:"):
            assert resolve_path(value).exists(), (path.name, key, value)
        elif isinstance(value, str):
            generated = "frameavg data generate-" in path.read_text()
            assert generated or path.stem in {"is2re", "s2ef", "qm9", "qm7x"}, (path.name, key, value)
