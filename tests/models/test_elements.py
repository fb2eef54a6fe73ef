"""The shipped element table: coverage, groups of the f-block, normalisation, provenance."""

from __future__ import annotations

import math

import pytest
import torch

from frameavg.models.elements import F_BLOCK_GROUP, MAX_ATOMIC_NUMBER, PROPERTY_NAMES, element_table

# Columns whose mendeleev values have not changed since 0.14 (the source of the shipped table).
STABLE_COLUMNS = (
    "atomic_radius", "density", "electron_affinity", "en_allen", "vdw_radius", "metallic_radius",
    "metallic_radius_c12", "covalent_radius_pyykko_double", "covalent_radius_pyykko_triple",
    "covalent_radius_pyykko",
)


def test_table_covers_z_1_to_100_with_periods_and_groups():
    table = element_table()
    assert len(table.symbols) == MAX_ATOMIC_NUMBER + 1 == 101
    assert table.symbols[1] == "H" and table.symbols[26] == "Fe" and table.symbols[100] == "Fm"
    assert table.properties.shape == (101, 14) and table.property_names == PROPERTY_NAMES
    assert torch.isfinite(table.properties).all() and (table.properties[0] == 0).all()
    assert table.period[[1, 3, 11, 19, 37, 55, 87, 100]].tolist() == [1, 2, 3, 4, 5, 6, 7, 7]
    # La and Ac are in group 3; Ce-Lu and Th-Fm (f-block) have no IUPAC group: 19.
    assert table.group[57] == 3 and table.group[89] == 3
    assert (table.group[58:72] == F_BLOCK_GROUP).all() and (table.group[90:101] == F_BLOCK_GROUP).all()
    assert table.group[[1, 6, 26, 79, 86]].tolist() == [1, 14, 8, 11, 18]


def test_properties_are_z_scored_over_the_originals_range():
    table = element_table()
    raw, scored = table.raw[1:86], table.properties[1:86]
    present = ~torch.isnan(raw)
    for column in range(14):
        values = scored[present[:, column], column]
        assert values.mean().abs() < 1e-12 and (values.std() - 1).abs() < 1e-12
        # missing entries hold the column mean of the z-scores (0 up to rounding)
        assert (scored[~present[:, column], column].abs() < 1e-12).all()
    # Heavier elements use the same statistics: their order follows the raw values.
    radius = PROPERTY_NAMES.index("covalent_radius_pyykko")
    assert (table.raw[86:, radius].argsort() == table.properties[86:, radius].argsort()).all()


def test_raw_values_agree_with_installed_mendeleev():
    """The CSV columns are the ones they claim to be (mendeleev, Z = 1..100)."""
    fetch = pytest.importorskip("mendeleev.fetch")
    frame = fetch.fetch_table("elements").set_index("atomic_number").loc[1:100]
    table = element_table()
    assert frame["period"].tolist() == table.period[1:].tolist()
    groups = frame["group_id"].fillna(F_BLOCK_GROUP).astype(int).tolist()
    assert groups == table.group[1:].tolist()
    for name in STABLE_COLUMNS:
        ours = table.raw[1:, PROPERTY_NAMES.index(name)].tolist()
        theirs = frame[name].tolist()
        for z, (a, b) in enumerate(zip(ours, theirs), start=1):
            assert (math.isnan(a) and (b is None or math.isnan(b))) or a == pytest.approx(b, rel=1e-12), (name, z)
