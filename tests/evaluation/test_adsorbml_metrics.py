"""AdsorbML metrics: anomaly flags on real Cu(111) adsorbate-slab geometries, and success rates,
counts and speed-ups against a table computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atom
from ase.build import add_adsorbate, fcc111

from frameavg.errors import ConfigError, DataError
from frameavg.evaluation.adsorbml import (
    ANOMALIES,
    connectivity,
    detect_anomalies,
    format_success_table,
    strategy_names,
    success_rates,
)

SLAB_ATOMS = 36  # 3 x 3 x 4


def cu111_slab():
    """Cu(111), 4 layers, OC20 tags: top layer 1, the three below 0 (ASE tags layers 1 = top .. 4)."""
    slab = fcc111("Cu", size=(3, 3, 4), vacuum=7.0, a=3.6)
    slab.set_tags(np.where(slab.get_tags() == 1, 1, 0))
    return slab


def layer_z(layer):
    """Height (Å) of ASE layer ``layer`` (1 = top) of the Cu(111) slab."""
    slab = fcc111("Cu", size=(3, 3, 4), vacuum=7.0, a=3.6)
    return slab.positions[slab.get_tags() == layer, 2].mean()


def with_adsorbate(symbol, height):
    """Cu(111) with one ``symbol`` atom at the fcc site, ``height`` Å above the top layer (tag 2)."""
    adslab = cu111_slab()
    add_adsorbate(adslab, symbol, height, "fcc")
    tags = adslab.get_tags()
    tags[SLAB_ATOMS:] = 2
    adslab.set_tags(tags)
    return adslab


def with_hydroxyl():
    """OH at the fcc site: O 1.3 Å above the top layer, H 0.98 Å above O."""
    adslab = with_adsorbate("O", 1.3)
    adslab.append(Atom("H", adslab.positions[-1] + [0.0, 0.0, 0.98], tag=2))
    return adslab


# --------------------------------------------------------------------------------------------
# connectivity and anomalies


def test_connectivity_counts_fcc111_neighbours():
    bonds = connectivity(cu111_slab())
    layers = fcc111("Cu", size=(3, 3, 4), vacuum=7.0, a=3.6).get_tags()
    assert bonds.dtype == bool and bonds.shape == (SLAB_ATOMS, SLAB_ATOMS)
    assert np.array_equal(bonds, bonds.T) and not bonds.diagonal().any()
    coordination = bonds.sum(axis=1)
    # fcc: 12 nearest neighbours inside, 9 at either face (6 in plane + 3 in the next layer)
    assert set(coordination[(layers == 1) | (layers == 4)]) == {9}
    assert set(coordination[(layers == 2) | (layers == 3)]) == {12}
    # periodic along x, y only: without pbc the edge atoms of a layer lose in-plane neighbours
    isolated = cu111_slab()
    isolated.pbc = False
    assert connectivity(isolated).sum() < bonds.sum()
    # m = 1.5 reaches the 2nd and 3rd neighbour shells (3.6 and 4.41 Å < 1.5·2.64 + 0.6 Å)
    assert (connectivity(cu111_slab(), 1.5).sum(axis=1)[(layers == 2) | (layers == 3)] > 12).all()


def test_normal_relaxation_is_not_flagged():
    initial = with_adsorbate("O", 1.2)
    relaxed = initial.copy()
    rng = np.random.default_rng(0)
    relaxed.positions += rng.normal(scale=0.02, size=relaxed.positions.shape)
    relaxed.positions[-1] += [0.05, -0.03, 0.04]
    before = relaxed.positions.copy(), initial.positions.copy()
    assert detect_anomalies(initial, relaxed, cu111_slab()) == []
    assert detect_anomalies(initial, relaxed) == []
    assert np.array_equal(relaxed.positions, before[0]) and np.array_equal(initial.positions, before[1])


def test_lifted_oxygen_is_desorbed():
    initial = with_adsorbate("O", 1.2)
    relaxed = initial.copy()
    relaxed.positions[-1, 2] += 6.0
    assert detect_anomalies(initial, relaxed, cu111_slab()) == ["desorbed"]


def test_hydrogen_leaving_oxygen_is_dissociated():
    initial = with_hydroxyl()
    relaxed = initial.copy()
    relaxed.positions[-1] = initial.positions[-2] + [3.0, 0.0, -0.3]  # 1.0 Å above the surface
    assert "dissociated" in detect_anomalies(initial, relaxed, cu111_slab())
    assert detect_anomalies(initial, relaxed, cu111_slab()) == ["dissociated"]
    assert detect_anomalies(initial, initial.copy(), cu111_slab()) == []


def test_surface_atom_pulled_out_changes_the_surface():
    initial = with_adsorbate("O", 1.2)
    relaxed = initial.copy()
    top = np.flatnonzero(initial.get_tags() == 1)
    farthest = top[np.argmax(initial.get_distances(SLAB_ATOMS, top, mic=True))]  # away from the O
    relaxed.positions[farthest, 2] += 3.0
    assert detect_anomalies(initial, relaxed, cu111_slab()) == ["surface_changed"]
    assert detect_anomalies(initial, relaxed) == []  # no clean slab: not checked
    # with the 1.5 cushion the in-plane bonds (3.93 Å) survive but those to layer 2 (5.29 Å) do not and
    # flag it; a 3.0 cushion keeps them too
    assert detect_anomalies(initial, relaxed, cu111_slab(), surface_change_multiplier=3.0) == []


def test_hydrogen_below_the_top_layer_is_intercalated():
    initial = with_adsorbate("H", 1.0)
    relaxed = initial.copy()
    relaxed.positions[-1, 2] = (layer_z(1) + layer_z(2)) / 2
    assert detect_anomalies(initial, relaxed, cu111_slab()) == ["intercalated"]


def test_all_anomalies_in_order():
    initial = with_hydroxyl()
    relaxed = initial.copy()
    relaxed.positions[-2, 2] += 8.0  # O far up in the vacuum
    relaxed.positions[-1, 2] = (layer_z(1) + layer_z(2)) / 2  # H into the slab
    flags = detect_anomalies(initial, relaxed, cu111_slab())
    assert flags == ["dissociated", "intercalated"]  # H still bonds the slab: not desorbed
    assert [name for name in ANOMALIES if name in flags] == flags


def test_relaxed_without_tags_uses_initial_tags():
    initial = with_adsorbate("O", 1.2)
    relaxed = initial.copy()
    relaxed.positions[-1, 2] += 6.0
    relaxed.set_tags(0)
    assert detect_anomalies(initial, relaxed) == ["desorbed"]


def test_bad_structures_raise_data_error():
    initial = with_adsorbate("O", 1.2)
    with pytest.raises(DataError, match="differ in size: 37 vs 36"):
        detect_anomalies(initial, initial[:-1])
    swapped = initial.copy()
    swapped.symbols[-1] = "N"
    with pytest.raises(DataError, match="element order: atom 36 is O vs N"):
        detect_anomalies(initial, swapped)
    with pytest.raises(DataError, match="no adsorbate atom"):
        detect_anomalies(cu111_slab(), cu111_slab())
    retagged = initial.copy()
    retagged.set_tags(1)
    with pytest.raises(DataError, match="differ in tags"):
        detect_anomalies(initial, retagged)
    with pytest.raises(DataError, match="clean slab has 35 atoms"):
        detect_anomalies(initial, initial.copy(), cu111_slab()[:-1])
    alloy = cu111_slab()
    alloy.symbols[0] = "Ag"
    with pytest.raises(DataError, match="clean slab differs in element order"):
        detect_anomalies(initial, initial.copy(), alloy)
    with pytest.raises(ConfigError, match="multiplier"):
        detect_anomalies(initial, initial.copy(), desorption_multiplier=0.0)


# --------------------------------------------------------------------------------------------
# success rates


def hand_table():
    """4 systems, 2 splits, threshold 0.1 eV, ks (1, 2); outcomes worked out in the comments."""
    return [
        {  # A (id): the lowest-ML candidate is anomalous and dropped -> ranking a2, a3, a4
            "system": "Cu-111-O", "split": "id", "gt_min": -1.00, "gt_calls": 1000,
            "candidates": [
                {"ml_energy": -1.30, "anomalous": True, "sp_energy": -2.0, "rx_energy": -2.0, "rx_calls": 5},
                # a2: ml_only not validated (|-0.80 + 1.05| = 0.25) -> fail; sp@1: -0.80 + 1.00 = 0.20 fail;
                # rx@1: -0.98 + 1.00 = 0.02 success (30 calls)
                {"ml_energy": -1.05, "anomalous": False, "sp_energy": -0.80, "rx_energy": -0.98, "rx_calls": 30,
                 "ml_steps": 120},
                # a3: sp@2: min(-0.80, -0.97) + 1.00 = 0.03 success; rx@2: -1.02 + 1.00 = -0.02 success, not
                # much better (50 calls)
                {"ml_energy": -0.95, "anomalous": False, "sp_energy": -0.97, "rx_energy": -1.02, "rx_calls": 20},
                # a4: beyond k = 2 (its much lower rx_energy is never computed)
                {"ml_energy": -0.50, "anomalous": False, "sp_energy": -0.55, "rx_energy": -1.30, "rx_calls": 50},
            ],
        },
        {  # B (id): every candidate anomalous -> fails everything, 0 ground-truth calls
            "system": "Pt-100-CO", "split": "id", "gt_min": -0.50, "gt_calls": 2000,
            "candidates": [
                {"ml_energy": -0.70, "anomalous": True, "sp_energy": -0.60, "rx_energy": -0.60, "rx_calls": 10},
                {"ml_energy": -0.40, "anomalous": True},
            ],
        },
        {  # C (ood): much better everywhere
            "system": "Ag-110-OH", "split": "ood", "gt_min": -2.00, "gt_calls": 800,
            "candidates": [
                # c2 listed first; ranking c1 (-2.30), c2 (-2.10)
                {"ml_energy": -2.10, "anomalous": False, "sp_energy": -2.05, "rx_energy": -2.06, "rx_calls": 15},
                # c1: ml_only validated (0.05), -2.25 + 2.00 = -0.25 < -0.1 -> success, much better;
                # sp@1, sp@2: -0.25 much better; rx@1: -0.35 much better (10 calls), rx@2: 25 calls
                {"ml_energy": -2.30, "anomalous": False, "sp_energy": -2.25, "rx_energy": -2.35, "rx_calls": 10},
            ],
        },
        {  # D (ood): one candidate: ml_only not validated (0.15), sp 0.50 - 0.30 = 0.20 fail (1 single point
            # at k = 1 and k = 2), rx 0.38 - 0.30 = 0.08 success (40 calls at k = 1 and 2)
            "system": "Au-211-N", "split": "ood", "gt_min": 0.30, "gt_calls": 1200,
            "candidates": [
                {"ml_energy": 0.35, "anomalous": False, "sp_energy": 0.50, "rx_energy": 0.38, "rx_calls": 40},
            ],
        },
    ]


# (successes, much_better, gt_calls) by hand; systems: 2, 2, 4; brute-force calls 3000, 2000, 5000
EXPECTED = {
    "id": {"ml_only": (0, 0, 1), "sp@1": (0, 0, 1), "sp@2": (1, 0, 2), "rx@1": (1, 0, 30), "rx@2": (1, 0, 50)},
    "ood": {"ml_only": (1, 1, 2), "sp@1": (1, 1, 2), "sp@2": (1, 1, 3), "rx@1": (2, 1, 50), "rx@2": (2, 1, 65)},
    "all": {"ml_only": (1, 1, 3), "sp@1": (1, 1, 3), "sp@2": (2, 1, 5), "rx@1": (3, 1, 80), "rx@2": (3, 1, 115)},
}
SPEEDUPS = {  # brute force / strategy calls
    "id": {"ml_only": 3000.0, "sp@1": 3000.0, "sp@2": 1500.0, "rx@1": 100.0, "rx@2": 60.0},
    "ood": {"ml_only": 1000.0, "sp@1": 1000.0, "sp@2": 2000 / 3, "rx@1": 40.0, "rx@2": 2000 / 65},
    "all": {"ml_only": 5000 / 3, "sp@1": 5000 / 3, "sp@2": 1000.0, "rx@1": 62.5, "rx@2": 5000 / 115},
}
RATES = {  # successes / systems
    "id": {"ml_only": 0.0, "sp@1": 0.0, "sp@2": 0.5, "rx@1": 0.5, "rx@2": 0.5},
    "ood": {"ml_only": 0.5, "sp@1": 0.5, "sp@2": 0.5, "rx@1": 1.0, "rx@2": 1.0},
    "all": {"ml_only": 0.25, "sp@1": 0.25, "sp@2": 0.5, "rx@1": 0.75, "rx@2": 0.75},
}


def test_success_rates_match_hand_computed_table():
    systems = hand_table()
    rates = success_rates(systems, ks=(1, 2), threshold=0.1)
    assert list(rates) == ["id", "ood", "all"]
    assert {"id": 2, "ood": 2, "all": 4} == {split: rates[split]["ml_only"]["systems"] for split in rates}
    for split, strategies in EXPECTED.items():
        assert list(rates[split]) == ["ml_only", "sp@1", "sp@2", "rx@1", "rx@2"]
        for strategy, (successes, much_better, calls) in strategies.items():
            got = rates[split][strategy]
            counts = (got["successes"], got["much_better"], got["gt_calls"])
            assert counts == (successes, much_better, calls), (split, strategy)
            assert got["success_rate"] == pytest.approx(RATES[split][strategy]), (split, strategy)
            assert got["speedup"] == pytest.approx(SPEEDUPS[split][strategy]), (split, strategy)
    assert systems == hand_table()  # input untouched


def test_success_threshold_and_k_beyond_candidates():
    # threshold 0.3 eV: A's ml_only is validated (0.25) and -0.80 + 1.00 = 0.20 <= 0.3; D validated (0.15)
    # and 0.20 <= 0.3 -> all four systems but B succeed ML-only
    loose = success_rates(hand_table(), ks=(1,), threshold=0.3)
    assert loose["all"]["ml_only"]["successes"] == 3
    # k = 5 > candidates: A evaluates its 3 candidates (sp: 3 calls, rx: 30 + 20 + 50), C 2, D 1
    wide = success_rates(hand_table(), ks=(5,))["all"]
    assert wide["sp@5"]["gt_calls"] == 3 + 0 + 2 + 1
    assert wide["rx@5"]["gt_calls"] == 100 + 0 + 25 + 40
    # A at k = 5: rx min -1.30 + 1.00 = -0.30 -> much better now too (with C)
    assert wide["rx@5"]["much_better"] == 2


def test_missing_ground_truth_gives_none():
    ml_only_data = [{
        "system": "Cu-111-O", "split": "user", "gt_min": -1.0, "gt_calls": 100,
        "candidates": [{"ml_energy": -1.05, "anomalous": False, "sp_energy": -1.02}],
    }]
    rates = success_rates(ml_only_data, ks=(1,))["user"]
    assert rates["ml_only"]["successes"] == 1 and rates["ml_only"]["speedup"] == pytest.approx(100.0)
    assert rates["sp@1"]["successes"] == 1
    assert rates["rx@1"] == {"success_rate": None, "successes": None, "much_better": None,
                             "systems": 1, "gt_calls": None, "speedup": None}
    ml_only_data[0]["candidates"][0]["sp_energy"] = None
    rates = success_rates(ml_only_data, ks=(1,))["user"]
    assert rates["ml_only"]["success_rate"] is None and rates["sp@1"]["speedup"] is None
    # every candidate anomalous: failures at no ground-truth cost, speed-up undefined
    ml_only_data[0]["candidates"][0]["anomalous"] = True
    rates = success_rates(ml_only_data, ks=(1,))["user"]
    assert rates["ml_only"]["successes"] == 0 and rates["ml_only"]["gt_calls"] == 0
    assert rates["ml_only"]["speedup"] is None


def test_success_table_formats_rates_and_speedups():
    table = format_success_table(success_rates(hand_table(), ks=(1, 2)))
    lines = table.splitlines()
    assert lines[0] == ("| strategy | id success (%) | id speed-up | ood success (%) | ood speed-up "
                        "| all success (%) | all speed-up |")
    assert lines[2] == "| ML-only | 0.0 | 3000.0x | 50.0 | 1000.0x | 25.0 | 1666.7x |"
    assert lines[4] == "| ML+SP@2 | 50.0 | 1500.0x | 50.0 | 666.7x | 50.0 | 1000.0x |"
    assert lines[6] == "| ML+RX@2 | 50.0 | 60.0x | 100.0 | 30.8x | 75.0 | 43.5x |"
    assert len(lines) == 2 + len(strategy_names((1, 2)))
    empty_gt = [{"system": "x", "split": "s", "gt_min": 0.0, "gt_calls": 1,
                 "candidates": [{"ml_energy": 0.0, "anomalous": False}]}]
    assert "| ML-only | n/a | n/a | n/a | n/a |" in format_success_table(success_rates(empty_gt, ks=(1,)))
    with pytest.raises(DataError):
        format_success_table({})


def test_bad_success_input_raises():
    with pytest.raises(DataError, match="empty"):
        success_rates([])
    broken = hand_table()
    del broken[2]["gt_min"]
    with pytest.raises(DataError, match="'Ag-110-OH' lacks 'gt_min'"):
        success_rates(broken)
    broken = hand_table()
    del broken[0]["candidates"][1]["ml_energy"]
    with pytest.raises(DataError, match="'Cu-111-O', candidate 1 lacks 'ml_energy'"):
        success_rates(broken)
    broken = hand_table()
    broken[3]["candidates"][0]["rx_calls"] = -1
    with pytest.raises(DataError, match="'Au-211-N'.*rx_calls"):
        success_rates(broken)
    broken = hand_table()
    broken[1]["split"] = "all"
    with pytest.raises(DataError, match="split"):
        success_rates(broken)
    broken = hand_table()
    broken.append(dict(broken[0]))
    with pytest.raises(DataError, match="twice"):
        success_rates(broken)
    for ks in [(0,), (1, -2), (1.5,), (True,), ()]:
        with pytest.raises(ConfigError):
            success_rates(hand_table(), ks=ks)
    with pytest.raises(ConfigError, match="threshold"):
        success_rates(hand_table(), threshold=0.0)


def test_anomalous_ground_truth_relaxations_cost_calls_but_do_not_count():
    """RX@2 with the second ground-truth relaxation anomalous: only the first one's energy counts
    (0.3 eV above the minimum: a failure), but both relaxations' calls are paid."""
    system = {"system": "s", "split": "id", "gt_min": 0.0, "gt_calls": 100, "candidates": [
        {"ml_energy": 0.0, "anomalous": False, "sp_energy": 0.3, "rx_energy": 0.3, "rx_calls": 10},
        {"ml_energy": 0.1, "anomalous": False, "sp_energy": 0.5, "rx_energy": None, "rx_calls": 15,
         "rx_anomalous": True}]}
    rates = success_rates([system], ks=(1, 2))["id"]
    assert rates["rx@2"]["successes"] == 0 and rates["rx@2"]["gt_calls"] == 25
    assert rates["rx@2"]["speedup"] == pytest.approx(4.0)
    system["candidates"][0]["rx_anomalous"], system["candidates"][0]["rx_energy"] = True, None
    assert success_rates([system], ks=(2,))["id"]["rx@2"] == {"success_rate": 0.0, "successes": 0, "much_better": 0,
                                                              "systems": 1, "gt_calls": 25, "speedup": 4.0}
