"""Train/val/test splits (seeded random, or from index files) and datasets built from a config.

``build_datasets(config)`` is the data-module-ready entry point: a plain dict (the ``data`` section
of a YAML config) in, ``{"train": Dataset, "val": ..., "test": ...}`` out. Two layouts::

    # one source, split here                     # one source per split
    path: data/all.extxyz                        train: data/train.lmdb
    split: {train: 0.8, val: 0.1, test: 0.1,     val: {path: data/val.lmdb}
            seed: 0}                              test: data/test.lmdb
    # or split: {train: idx_train.npy, val: idx_val.txt}

Shared keys: ``format``, ``keys``, ``required``, ``trusted``, ``dtype`` ("float32"/"float64"),
``cutoff`` and ``max_neighbors`` / ``strict_neighbors`` (adds a ``RadiusGraph`` transform),
``options`` (reader-specific, e.g. ``{targets: [U0]}``). A per-split mapping may override them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from frameavg.data.datasets import open_dataset
from frameavg.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "val", "test")
_SHARED_KEYS = {"format", "keys", "required", "trusted", "dtype", "cutoff", "max_neighbors", "strict_neighbors", "options"}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def random_split(n: int, sizes: Mapping[str, float | int | None], seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint random index sets over ``range(n)``.

    Args:
        n: number of structures.
        sizes: split name -> fraction (float in (0,1]), count (int), or None for "all the rest"
            (at most one). Fractions are rounded down, and when fractions alone add up to 1 the
            rounding remainder goes to the first split, so that every index is used.
        seed: seed of the permutation (numpy ``default_rng``); same seed, same split.
    """
    if not sizes:
        raise ConfigError("split sizes are empty")
    counts: dict[str, int | None] = {}
    for name, size in sizes.items():
        if size is None:
            counts[name] = None
        elif isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
            raise ConfigError(f"split '{name}': size must be a fraction, a count or null, got {size!r}")
        elif isinstance(size, (float, np.floating)):
            if not 0.0 <= size <= 1.0:
                raise ConfigError(f"split '{name}': fraction {size} is not in [0, 1]")
            counts[name] = math.floor(size * n + 1e-9)
        else:
            if size < 0:
                raise ConfigError(f"split '{name}': negative count {size}")
            counts[name] = int(size)
    rest = [name for name, c in counts.items() if c is None]
    if len(rest) > 1:
        raise ConfigError(f"only one split may take the rest (null size): {', '.join(rest)}")
    fixed = sum(c for c in counts.values() if c is not None)
    if fixed > n:
        raise DataError(f"split sizes add up to {fixed} structures but there are only {n}")
    if rest:
        counts[rest[0]] = n - fixed
    elif all(isinstance(s, (float, np.floating)) for s in sizes.values()) and abs(sum(sizes.values()) - 1.0) < 1e-6:
        counts[next(iter(counts))] += n - fixed
    order = np.random.default_rng(seed).permutation(n)
    result, start = {}, 0
    for name, count in counts.items():
        result[name] = np.sort(order[start : start + count])
        start += count
    return result


def load_index_file(path: str | Path, n: int | None = None) -> np.ndarray:
    """Integer indices from ``.npy`` (no pickle), ``.json`` (a list, or ``{"indices": [...]}``) or
    text (whitespace/comma separated, ``#`` comments); checked against ``n`` structures."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise DataError("index file not found", source=source)
    try:
        if path.suffix.lower() == ".npy":
            values = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".json":
            content = json.loads(path.read_text())
            values = np.asarray(content["indices"] if isinstance(content, dict) else content)
        else:
            text = " ".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
            values = np.asarray([float(tok) for tok in text.replace(",", " ").split()])
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise DataError(f"cannot read indices ({type(exc).__name__}: {exc})", source=source) from None
    values = np.asarray(values).reshape(-1)
    if values.size == 0:
        raise DataError("index file holds no indices", source=source)
    if values.dtype.kind not in "iuf" or (values != np.round(values)).any():
        raise DataError("indices must be integers", source=source)
    indices = values.astype(np.int64)
    if indices.min() < 0 or (n is not None and indices.max() >= n):
        raise DataError(f"indices must lie in [0, {n}) ({indices.min()}..{indices.max()} found)", source=source)
    unique, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"duplicate indices, e.g. {unique[counts > 1][:5].tolist()}", source=source)
    return indices


def index_split(n: int, files: Mapping[str, str | Path]) -> dict[str, np.ndarray]:
    """Splits read from index files (``{"train": "idx_train.npy", ...}``); they must not overlap."""
    result = {name: load_index_file(path, n) for name, path in files.items()}
    names = list(result)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            common = np.intersect1d(result[names[a]], result[names[b]])
            if common.size:
                raise DataError(
                    f"splits '{names[a]}' and '{names[b]}' share {common.size} indices, e.g. {common[:5].tolist()}"
                )
    return result


def build_datasets(config: Mapping) -> dict[str, Dataset]:
    """Datasets for each split named in ``config`` (see the module docstring for the layout)."""
    config = dict(config)
    allowed = _SHARED_KEYS | {"path", "split", *SPLIT_NAMES}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ConfigError(f"unknown data config key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    shared = {k: config[k] for k in _SHARED_KEYS if k in config}
    per_split = {name: config[name] for name in SPLIT_NAMES if config.get(name) is not None}
    if "path" in config:
        if per_split:
            raise ConfigError("give either 'path' (+ 'split') or per-split paths (train/val/test), not both")
        dataset = _open(config["path"], shared)
        split = dict(config.get("split") or {"train": 1.0})
        seed = int(split.pop("seed", 0))
        if all(isinstance(v, (str, Path)) for v in split.values()):
            indices = index_split(len(dataset), split)
        else:
            indices = random_split(len(dataset), split, seed=seed)
        return {name: Subset(dataset, idx.tolist()) for name, idx in indices.items()}
    if not per_split:
        raise ConfigError("data config needs 'path' or at least one of train/val/test")
    if "split" in config:
        raise ConfigError("'split' applies only with a single 'path'")
    datasets = {}
    for name, entry in per_split.items():
        if isinstance(entry, (str, Path)):
            entry = {"path": entry}
        entry = dict(entry)
        bad = sorted(set(entry) - _SHARED_KEYS - {"path"})
        if bad or "path" not in entry:
            raise ConfigError(f"data.{name}: needs 'path'; unknown key(s): {', '.join(bad) or 'none'}")
        datasets[name] = _open(entry.pop("path"), {**shared, **entry})
    return datasets


def _open(path, settings: Mapping) -> Dataset:
    from frameavg.data.neighbors import RadiusGraph

    dtype_name = settings.get("dtype", "float32")
    if dtype_name not in _DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype_name!r}")
    transform = None
    if settings.get("cutoff") is not None:
        transform = RadiusGraph(
            float(settings["cutoff"]), settings.get("max_neighbors"), strict=bool(settings.get("strict_neighbors", True))
        )
    return open_dataset(
        path,
        settings.get("format"),
        transform=transform,
        keys=settings.get("keys"),
        required=tuple(settings.get("required") or ()),
        trusted=bool(settings.get("trusted", False)),
        dtype=_DTYPES[dtype_name],
        **dict(settings.get("options") or {}),
    )
