"""The input formats frameavg reads: names, descriptions, aliases, options, detection order.

This table is the one place a format is described. It imports nothing heavy, so listing formats
(``frameavg data formats``) costs no torch import; the reader module named by ``module`` registers
its implementation (``registry.register``) when it is first needed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FormatInfo:
    """name; module (under ``frameavg.data.readers``); one-line description; aliases; reader options;
    order (auto-detection asks readers in ascending order, the first that accepts a path wins)."""

    name: str
    module: str
    description: str
    aliases: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    order: int = 100


FORMATS: tuple[FormatInfo, ...] = (
    # before the LMDB readers: an .aselmdb file is an LMDB file too (decided by its extension)
    FormatInfo("aselmdb", "aselmdb",
               "ASE-LMDB database (fairchem: OC20 re-releases, OC22, OMat24): .aselmdb file or a folder of them",
               aliases=("ase-lmdb", "fairchem-lmdb"), order=5),
    FormatInfo("frameavg-lmdb", "frameavg_lmdb",
               "frameavg LMDB (write_lmdb / frameavg data convert): one .lmdb file or a folder of them",
               aliases=("lmdb",), order=10),
    FormatInfo("oc20-lmdb", "oc20_lmdb", "legacy OC20/OCP LMDB of pickled PyG Data (needs trusted=True / --trusted)",
               aliases=("legacy-lmdb", "ocp-lmdb"), order=20),
    FormatInfo("qm9", "qm9", "QM9: qm9pack CSV file(s) (path 'qm9pack' = the installed package) or QM9 extxyz",
               aliases=("qm9-csv", "qm9pack"), options=("targets",), order=30),
    FormatInfo("md17", "md17", "MD17 .npz: rMD17 (nuclear_charges/coords/energies/forces) or MD17/sGDML (z/R/E/F)",
               aliases=("rmd17", "sgdml", "md17-npz"), options=("units", "indices"), order=32),
    FormatInfo("qm7x", "qm7x", "QM7-X HDF5 (1000.hdf5 ... 8000.hdf5): one file or a folder of them (needs h5py)",
               aliases=("qm7-x", "qm7x-hdf5"), options=("energy", "forces", "properties", "molecules"), order=34),
    FormatInfo("xu-kitchin", "xu_kitchin", "Xu-Kitchin adsorption JSON (folder with structures.json + energies.json)",
               aliases=("xu-kitchin-json",), options=("include_clean",), order=40),
    FormatInfo("pymatgen-json", "pymatgen_json",
               "pymatgen JSON: Structure/Molecule dicts, computed entries, lists of them (no pymatgen needed)",
               aliases=("pymatgen",), order=45),
    FormatInfo("ase-db", "ase_db", "ASE database: SQLite (.db) or ASE JSON (.json)",
               aliases=("db", "json", "ase-json"), order=50),
    FormatInfo("ase", "ase_files", "files ase.io reads: extxyz/xyz, ASE trajectories (.traj)",
               aliases=("extxyz", "xyz", "traj"), order=60),
    FormatInfo("ase-other", "ase_files", "any other format ase.io recognises (CIF, POSCAR, ...)", order=1000),
)

BY_NAME = {info.name: info for info in FORMATS}


def available_formats() -> dict[str, str]:
    """Reader name -> one-line description."""
    return {info.name: info.description for info in sorted(FORMATS, key=lambda i: i.name)}
