"""Reader for legacy OC20 / OCP LMDBs: pickled ``torch_geometric.data.Data`` under ASCII keys.

One ``.lmdb`` file or a folder of ``*.lmdb`` files (concatenated in name order). Keys are
``b"0"``, ``b"1"``, ...; an optional ``b"length"`` key holds the pickled entry count.

Unpickling runs code chosen by whoever wrote the file, so it happens only with ``trusted=True``
(CLI ``--trusted``). Convert a trusted legacy LMDB once to our pickle-free format with
``frameavg data convert --trusted IN OUT.lmdb``.

Field mapping (legacy -> ours): ``y`` -> ``energy`` (when there is no ``y``, as in IS2RE, the
relaxed energy ``y_relaxed`` becomes ``energy``), ``force`` -> ``forces``, ``fixed`` (0/1) ->
``fixed`` (bool), ``tags``, ``pos_relaxed``, ``y_init``, ``sid``, ``fid`` and other per-structure or
per-atom numbers keep their names. ``pbc`` is all True when the legacy object has a non-zero cell
and no ``pbc`` of its own (OC20 slabs are periodic in all three directions, with vacuum along z).
Precomputed edges (``edge_index``, ``cell_offsets``, ``distances``) are dropped: their cutoff and
conventions vary between OC20 releases; recompute them with ``RadiusGraph``.
"""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path
from typing import Iterator, Mapping

import ase
import numpy as np
import torch
from torch_geometric.data import Data

from frameavg.data.atomic_data import atoms_to_data
from frameavg.data.lmdb_store import LmdbSource, count_entries, is_lmdb_file, lmdb_kind
from frameavg.data.readers.registry import ReadOptions, register
from frameavg.errors import DataError

UNTRUSTED_MESSAGE = (
    "legacy OC20 LMDB entries are Python pickles, and loading a pickle can run arbitrary code; "
    "read it only if you trust where it came from, with trusted=True (CLI: --trusted). "
    "Convert it once with `frameavg data convert --trusted IN OUT.lmdb` to our pickle-free format"
)

_STRUCTURAL = {"pos", "atomic_numbers", "cell", "pbc", "natoms", "tags", "fixed"}
_DROPPED = {"edge_index", "cell_offsets", "distances", "offsets", "neighbors", "num_nodes", "__num_nodes__", "x"}
_GRAPH_LEVEL = {"y", "y_init", "y_relaxed", "energy", "sid", "fid", "stress", "virial"}


def sniff(path: Path) -> bool:
    if not (path.is_dir() and any(path.glob("*.lmdb"))) and not is_lmdb_file(path):
        return False
    return lmdb_kind(path) == "legacy"


def unpickle(blob: bytes, *, trusted: bool, source: str, index: int | str):
    """Load one legacy pickle; refuses unless the caller explicitly trusts the file."""
    if not trusted:
        raise DataError(UNTRUSTED_MESSAGE, source=source)
    try:
        return pickle.loads(blob)  # trusted
    except Exception as exc:  # a damaged pickle can raise almost anything
        raise DataError(f"corrupted legacy entry {index!r}: cannot unpickle ({type(exc).__name__}: {exc})", source=source) from None


def legacy_fields(obj) -> dict:
    """Field dict of an unpickled legacy object: PyG >= 2 ``Data`` (``_store``), PyG < 2 ``Data``
    (attributes directly in ``__dict__``) or a plain mapping."""
    if isinstance(obj, Mapping):
        return dict(obj)
    state = getattr(obj, "__dict__", None)
    if not isinstance(state, dict):
        raise TypeError(f"unexpected object of type {type(obj).__name__}")
    store = state.get("_store")
    if store is not None:
        return dict(store.items())
    return {k: v for k, v in state.items() if not k.startswith("_")}


def legacy_to_data(fields: dict, *, keys=None, required=(), dtype=torch.float32, source=None, index=None) -> Data:
    """Map legacy OC20 fields to ours (see module docstring) and validate via ``atoms_to_data``."""

    def fail(message):
        return DataError(message, source=source, index=index)

    def array(name):
        value = fields[name]
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
        return np.asarray(value)

    for name in ("pos", "atomic_numbers"):
        if name not in fields:
            raise fail(f"legacy entry has no '{name}'; fields: {', '.join(sorted(fields))}")
    positions = array("pos").astype(np.float64).reshape(-1, 3)
    numbers = array("atomic_numbers").reshape(-1)
    if numbers.dtype.kind == "f":
        if not np.isfinite(numbers).all() or (numbers != np.round(numbers)).any():
            raise fail("atomic_numbers are not integers")
    numbers = numbers.astype(np.int64)
    if len(numbers) != len(positions):
        raise fail(f"{len(numbers)} atomic numbers for {len(positions)} positions")
    n = len(numbers)
    cell = array("cell").astype(np.float64).reshape(3, 3) if "cell" in fields else np.zeros((3, 3))
    if "pbc" in fields:
        pbc = array("pbc").astype(bool).reshape(3)
    else:
        pbc = np.full(3, bool(np.abs(cell).sum() > 0))
    atoms = ase.Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    if "tags" in fields:
        atoms.set_tags(array("tags").astype(np.int64).reshape(-1))
    if "fixed" in fields:
        atoms.new_array("fixed", array("fixed").astype(bool).reshape(-1))
    for name, value in fields.items():
        if name in _STRUCTURAL or name in _DROPPED:
            continue
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n and name not in _GRAPH_LEVEL:
            atoms.new_array(name, value)
        else:
            atoms.info[name] = value.item() if isinstance(value, np.ndarray) and value.size == 1 else value
    keys = dict(keys or {})
    if "energy" not in keys and "y" not in fields and "energy" not in fields and "y_relaxed" in fields:
        keys["energy"] = "y_relaxed"
    return atoms_to_data(atoms, keys=keys, required=required, source=source, index=index, dtype=dtype)


def open_source(path: Path, options: ReadOptions) -> LmdbSource:
    """Random access to legacy LMDB file(s); requires ``options.trusted``."""
    if not options.trusted:
        raise DataError(UNTRUSTED_MESSAGE, source=str(path))
    decode = partial(
        _decode, trusted=options.trusted, keys=options.keys, required=options.required, dtype=options.dtype
    )
    lengths = count_entries(path, partial(_length_of, trusted=options.trusted))
    return LmdbSource(path, lengths, decode)  # picklable: spawned workers


def _length_of(env, file: Path, *, trusted: bool) -> int:
    with env.begin() as txn:
        raw = txn.get(b"length")
    if raw is None:
        return env.stat()["entries"]
    length = unpickle(raw, trusted=trusted, source=str(file), index="length")
    if not isinstance(length, (int, np.integer)) or length < 0:
        raise DataError(f"corrupted 'length' entry: {length!r}", source=str(file))
    return int(length)


def _decode(blob: bytes, file: Path, key: int, *, trusted, keys, required, dtype) -> Data:
    obj = unpickle(blob, trusted=trusted, source=str(file), index=key)
    try:
        fields = legacy_fields(obj)
    except TypeError as exc:
        raise DataError(f"not a legacy OC20 entry: {exc}", source=str(file), index=key) from None
    return legacy_to_data(fields, keys=keys, required=required, dtype=dtype, source=str(file), index=key)


@register("oc20-lmdb", sniff=sniff)
def iterate(path: Path, options: ReadOptions) -> Iterator[Data]:
    yield from open_source(path, options).stream()
