"""Reader for our own LMDB format (``write_lmdb`` / ``frameavg data convert``; no pickle)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Iterator

import torch
from torch_geometric.data import Data

from frameavg.data.atomic_data import check_key_mapping, check_required, validate_data
from frameavg.data.lmdb_store import LmdbSource, count_entries, decode_data, is_lmdb_file, lmdb_kind, read_meta
from frameavg.data.readers.registry import ReadOptions, register
from frameavg.errors import DataError


def sniff(path: Path) -> bool:
    if not (path.is_dir() and any(path.glob("*.lmdb"))) and not is_lmdb_file(path):
        return False
    return lmdb_kind(path) == "frameavg"  # raises a clear DataError for a corrupted file


def open_source(path: Path, options: ReadOptions) -> LmdbSource:
    """Random access to our LMDB file(s), applying key mapping, ``required`` and ``dtype``."""
    decode = partial(_decode, keys=dict(options.keys or {}), required=tuple(options.required), dtype=options.dtype)
    return LmdbSource(path, count_entries(path, _length_of), decode)  # picklable: spawned workers


def _length_of(env, file: Path) -> int:
    meta = read_meta(env, file)
    if meta is None:
        raise DataError("not a frameavg LMDB (legacy OC20 LMDB? use format='oc20-lmdb')", source=str(file))
    return int(meta["length"])


def _decode(blob: bytes, file: Path, key: int, *, keys, required, dtype) -> Data:
    data = decode_data(blob, source=str(file), index=key)
    validate_data(data, lambda message: DataError(f"invalid record: {message}", source=str(file), index=key))
    return apply_options(data, keys, required, dtype, source=str(file), index=key)


def apply_options(data: Data, keys, required, dtype, *, source, index) -> Data:
    """Rename mapped fields (``{ours: stored}``), check ``required``, cast floats to ``dtype``
    (except float64 graph-level scalars of shape [1], which stay float64 as in ``atoms_to_data``)."""

    def fail(message):
        return DataError(message, source=source, index=index)

    if keys:
        stored = list(data.keys())
        check_key_mapping(keys, stored, fail)
        values = {field: data[key] for field, key in keys.items()}
        for key in set(keys.values()):
            del data[key]
        for field, value in values.items():
            data[field] = value
    check_required(data, required, data.keys(), fail)
    if dtype is not None:
        for name, value in data.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dtype == dtype:
                continue
            if value.dtype == torch.float64 and value.shape == (1,):
                continue  # graph-level scalars (energy) stay float64, as atoms_to_data keeps them
            data[name] = value.to(dtype)
    return data


@register("frameavg-lmdb", sniff=sniff)
def iterate(path: Path, options: ReadOptions) -> Iterator[Data]:
    yield from open_source(path, options).stream()
