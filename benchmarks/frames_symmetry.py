"""Frames: measured symmetry errors of frame averaging (numbers for docs/frames.md).

A raw-coordinate network (``RawCoordinateMPNN``, hidden 32, 2 layers, cutoff 5 Å, random weights:
not invariant by itself) is wrapped in ``FrameAveraging`` and evaluated with
``frameavg.evaluation.symmetry.symmetry_report``. Three tables:

1. ``degenerate``: ASE reference geometries with degenerate spectra (benzene, methane, CO2, NH3,
   C60, fcc Cu, rocksalt NaCl) and the real near-degenerate QM7 molecules, rotation+reflection
   (+image/cell for crystals) errors with our handling vs plain PCA frames (``tol=0``, i.e. no
   degeneracy detected, as the original implementation), float64 and float32.
2. ``periodic``: energy/force change when atoms move to other periodic images, with our
   image-invariant frame cloud vs PCA of wrapped positions (the original's frames).
3. ``datasets``: every real dataset in tests/data/real, all checks, float64 and float32, with
   ``all`` frames; plus ``det`` (float64) and the bare model for contrast.
4. ``periodic-faenet``: EVERY shared periodic structure (11 OC20 IS2RE slabs, the S2EF system, 882
   Xu–Kitchin slabs, 295 oxides) and the CO-desorbed-above-Cu(111) slab, with a random FAENet
   (float64, all frames, forces = −∂E/∂x through the frames), in 2D and 3D frames: worst errors
   over all periodic checks, and which cloud level (reference atoms / all atoms / lattice) the
   frames took.

Usage::

    python benchmarks/frames_symmetry.py [--tables degenerate,periodic,datasets,periodic-faenet] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk, molecule
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data
from frameavg.data.neighbors import RadiusGraph
from frameavg.data.readers import iter_structures
from frameavg.evaluation.symmetry import model_inputs, symmetry_report, transform_structure
from frameavg.frames import FrameAveraging, average_outputs, compute_frames, expand_batch
from frameavg.models.raw_mpnn import RawCoordinateMPNN

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "real"  # real data kept in the repository
CUTOFF = 5.0
# name: (path under tests/data/real, frame dimension, count, stride)
DATASETS = {
    "QM9 subset": ("qm9_subset/qm9_random2000_seed0.extxyz", "3D", 64, 1),
    "QM7": ("qm7/qm7_first300.extxyz", "3D", 64, 1),
    "rMD17 ethanol": ("rmd17_ethanol/train.xyz", "3D", 32, 31),
    "ISO17 (fixture)": ("fixtures/schnetpack/test_iso.db", "3D", 8, 5),
    "ANI-1 (fixture)": ("fixtures/schnetpack/test_ani1.db", "3D", 8, 2),
    "MD17 aspirin (fixture)": ("fixtures/nequip/aspirin.xyz", "3D", 8, 1),
    "OC20 IS2RE slabs": ("oc20_is2re_samples/is2re_bs8.extxyz", "2D", 8, 1),
    "OC20 S2EF slab": ("oc20_s2ef_single/oc20_single_atoms.json", "2D", 1, 1),
    "Xu-Kitchin slabs": ("xu_kitchin_adsorption", "2D", 40, 21),
    "oxide bulk crystals": ("oxides_eos/oxides.db", "3D", 40, 7),
}
MOLECULE_CHECKS = ("rotation", "reflection", "translation", "permutation")
PERIODIC_CHECKS = MOLECULE_CHECKS + ("image", "cell")


def raw_model(dtype, seed=0):
    torch.manual_seed(seed)
    return RawCoordinateMPNN(hidden=32, num_layers=2, cutoff=CUTOFF).to(dtype).eval()


def worst(report):
    rows = [r for r in report.rows if r.check not in ("batch", "repeat")]
    return {
        "energy_abs": max(r.energy_abs_max for r in rows), "energy_rel": max(r.energy_rel_max for r in rows),
        "forces_abs": max(r.forces_abs_max for r in rows), "forces_rel": max(r.forces_rel_max for r in rows),
    }


def reference_structures(dtype):
    out = {}
    for name in ("C6H6", "CH4", "CO2", "NH3", "C60"):
        out[name] = atoms_to_data(molecule(name), dtype=dtype)
    out["Cu (fcc, 1 atom)"] = atoms_to_data(bulk("Cu"), dtype=dtype)
    out["NaCl (rocksalt)"] = atoms_to_data(bulk("NaCl", "rocksalt", a=5.64), dtype=dtype)
    qm7 = list(itertools.islice(iter_structures(DATA / "qm7" / "qm7_first300.extxyz", dtype=dtype), 239))
    for index, name in ((0, "QM7 #0 methane"), (1, "QM7 #1 ethane"), (3, "QM7 #3 acetylene"),
                        (65, "QM7 #65 neopentane"), (238, "QM7 #238 benzene")):
        out[name] = model_inputs(qm7[index])
    return out


def degenerate_table(trials=5):
    rows = []
    for dtype in (torch.float64, torch.float32):
        for name, data in reference_structures(dtype).items():
            periodic = bool(data.pbc.any())
            checks = ("rotation", "reflection") + (("image", "cell") if periodic else ())
            row = {"structure": name, "dtype": str(dtype).removeprefix("torch.")}
            for label, tol in (("handled", None), ("plain", 0.0)):
                kwargs = {} if tol is None else {"tol": tol}
                model = FrameAveraging(raw_model(dtype), "3D", "all", **kwargs).eval()
                report = symmetry_report(model, [data], checks=checks, cutoff=CUTOFF, trials=trials)
                row[label] = worst(report)
                if label == "handled":
                    row["class"], = report.degeneracy
                    row["frames"] = report.degeneracy[row["class"]]["frames_mean"]
            rows.append(row)
    return rows


def _wrapped_pca_predict(model, data_list):
    """Energies/forces with frames from PCA of wrapped positions (the original's periodic frames)."""
    graph = RadiusGraph(CUTOFF)
    batch = Batch.from_data_list([graph(d.clone()) for d in data_list])
    frames = compute_frames(batch.pos, batch.batch, batch.num_graphs, method="all", dim="2D")  # no cell: plain PCA
    frames.cell = torch.bmm(batch.cell.index_select(0, frames.graph), frames.rotation)
    expanded, edges = expand_batch(batch, frames)
    with torch.no_grad():
        out = average_outputs(model(expanded), frames, num_atoms=batch.num_nodes, edges=edges)
    return out["energy"], out["forces"]


def periodic_table(seed=0):
    rng = np.random.default_rng(seed)
    slabs = [model_inputs(d) for d in iter_structures(DATA / "oc20_is2re_samples" / "is2re_bs8.extxyz", dtype=torch.float64)]
    moved = [transform_structure(d, "image", rng).data for d in slabs]
    inner = raw_model(torch.float64)
    ours = FrameAveraging(inner, "2D", "all").eval()
    graph = RadiusGraph(CUTOFF)
    with torch.no_grad():
        a = ours(Batch.from_data_list([graph(d.clone()) for d in slabs]))
        b = ours(Batch.from_data_list([graph(d.clone()) for d in moved]))
    e0, f0 = _wrapped_pca_predict(inner, slabs)
    e1, f1 = _wrapped_pca_predict(inner, moved)
    return {
        "structures": len(slabs),
        "image_invariant_cloud": {"energy_abs_max": float((a["energy"] - b["energy"]).abs().max()),
                                  "forces_abs_max": float((a["forces"] - b["forces"]).norm(dim=-1).max())},
        "wrapped_position_pca": {"energy_abs_max": float((e0 - e1).abs().max()),
                                 "forces_abs_max": float((f0 - f1).norm(dim=-1).max())},
    }


def datasets_table():
    rows = []
    for name, (path, dim, count, stride) in DATASETS.items():
        row = {"dataset": name, "frames": dim}
        for dtype in (torch.float64, torch.float32):
            stream = iter_structures(DATA / path, dtype=dtype)
            structures = [model_inputs(d) for d in itertools.islice(stream, 0, count * stride, stride)]
            periodic = bool(structures[0].pbc.any())
            checks = PERIODIC_CHECKS if periodic else MOLECULE_CHECKS
            model = FrameAveraging(raw_model(dtype), dim, "all").eval()
            report = symmetry_report(model, structures, checks=checks + ("batch",), dim=dim, cutoff=CUTOFF, seed=1)
            key = str(dtype).removeprefix("torch.")
            row[key] = worst(report)
            row[key]["batch_abs"] = max(report.row("batch").energy_abs_max, report.row("batch").forces_abs_max)
            row["structures"] = len(structures)
            row["degeneracy"] = {k: v["count"] for k, v in report.degeneracy.items()}
            if dtype == torch.float64:
                det = FrameAveraging(raw_model(dtype), dim, "det").eval()
                row["det_float64"] = worst(symmetry_report(det, structures, checks=checks, dim=dim, cutoff=CUTOFF, seed=1))
                bare = symmetry_report(raw_model(dtype), structures, checks=("rotation",), dim=dim, cutoff=CUTOFF, seed=1)
                row["bare_model_rotation"] = worst(bare)
        rows.append(row)
    return rows


PERIODIC_SETS = {
    "OC20 IS2RE slabs (11)": ["oc20_is2re_samples/is2re_bs8.extxyz", "oc20_is2re_samples/is2re_bs3.extxyz"],
    "OC20 S2EF system": ["oc20_s2ef_single/oc20_single_atoms.json"],
    "Xu–Kitchin slabs": ["xu_kitchin_adsorption"],
    "oxide bulk crystals": ["oxides_eos/oxides.db"],
}


def faenet_fa(dim):
    from frameavg.models import FAENet

    torch.manual_seed(0)
    model = FAENet(cutoff=6.0, hidden_channels=64, num_filters=64, num_interactions=2, num_gaussians=20,
                   tag_hidden_channels=8, pg_hidden_channels=8, phys_embeds=False, max_atomic_number=100,
                   regress_forces=None)
    return FrameAveraging(model, dims=dim, method="all", forces="gradient", cutoff=6.0).double().eval()


def co_above_cu111():
    from ase.build import add_adsorbate, fcc111

    slab = fcc111("Cu", size=(3, 3, 4), vacuum=12.0)
    add_adsorbate(slab, molecule("CO"), height=7.5, position="ontop", mol_index=0)
    slab.center(vacuum=12.0, axis=2)
    return atoms_to_data(slab, dtype=torch.float64)


def periodic_faenet_table():
    rows = []
    sets = {"CO 7.5 Å above Cu(111)": None, **PERIODIC_SETS}
    for name, paths in sets.items():
        if paths is None:
            structures = [model_inputs(co_above_cu111())]
        else:
            structures = [model_inputs(d) for path in paths for d in iter_structures(DATA / path, dtype=torch.float64)]
        for dim in ("2D", "3D"):
            report = symmetry_report(faenet_fa(dim), structures, checks=PERIODIC_CHECKS, dim=dim, cutoff=6.0,
                                     batch_size=16)
            levels = {}
            for path, d in report.degeneracy.items():
                level = path.split("/")[-1]
                levels[level] = levels.get(level, 0) + d["count"]
            rows.append({"dataset": name, "frames": dim, "structures": len(structures), **worst(report),
                         "cloud_levels": levels, "paths": {k: v["count"] for k, v in report.degeneracy.items()}})
            print(f"  {name} {dim}: |dE| {rows[-1]['energy_abs']:.1e} |dF| {rows[-1]['forces_abs']:.1e} {levels}", file=sys.stderr,
                  flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="degenerate,periodic,datasets")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tables = args.tables.split(",")
    result = {}
    if "degenerate" in tables:
        result["degenerate"] = degenerate_table()
    if "periodic" in tables:
        result["periodic"] = periodic_table()
    if "datasets" in tables:
        result["datasets"] = datasets_table()
    if "periodic-faenet" in tables:
        result["periodic-faenet"] = periodic_faenet_table()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    if "degenerate" in result:
        print("Degenerate spectra: max over rotation/reflection (+image/cell) trials")
        print(f"{'structure':22s} {'dtype':8s} {'class':7s} {'frames':>6s} | {'handled |dE|':>12s} {'|dF|':>9s} | {'plain |dE|':>10s} {'|dF|':>9s}")
        for r in result["degenerate"]:
            h, p = r["handled"], r["plain"]
            print(f"{r['structure']:22s} {r['dtype']:8s} {r['class']:7s} {r['frames']:6.0f} | {h['energy_abs']:12.1e} "
                  f"{h['forces_abs']:9.1e} | {p['energy_abs']:10.1e} {p['forces_abs']:9.1e}")
    if "periodic" in result:
        p = result["periodic"]
        print(f"\nPeriodic image shifts ({p['structures']} OC20 slabs, every atom moved by random lattice vectors):")
        for key in ("image_invariant_cloud", "wrapped_position_pca"):
            print(f"  {key:22s} |dE| max {p[key]['energy_abs_max']:.1e}  |dF| max {p[key]['forces_abs_max']:.1e}")
    if "datasets" in result:
        print("\nReal datasets, all frames: max over all checks (|dE| eV, relative; |dF| eV/Å, relative)")
        for r in result["datasets"]:
            a, b = r["float64"], r["float32"]
            print(f"{r['dataset']:24s} {r['frames']} n={r['structures']:3d} f64 {a['energy_abs']:.1e} {a['forces_abs']:.1e} "
                  f"batch {a['batch_abs']:.0e} | f32 rel {b['energy_rel']:.1e} {b['forces_rel']:.1e} abs {b['forces_abs']:.1e} "
                  f"| det {r['det_float64']['energy_abs']:.1e} | bare {r['bare_model_rotation']['energy_abs']:.1e} "
                  f"{r['bare_model_rotation']['forces_abs']:.1e} | {r['degeneracy']}")
    if "periodic-faenet" in result:
        print("\nEvery shared periodic structure, FAENet all frames, float64: max over all periodic checks")
        for r in result["periodic-faenet"]:
            print(f"{r['dataset']:24s} {r['frames']} n={r['structures']:4d} |dE| {r['energy_abs']:.1e} "
                  f"|dF| {r['forces_abs']:.1e} | {r['cloud_levels']} | {r['paths']}")


if __name__ == "__main__":
    main()
