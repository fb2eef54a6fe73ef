"""The shared reader registry: each reader module registers a name, a cheap sniff and an iterator.

A reader turns one path (file or folder) into an iterator of validated ``Data`` objects (see
``frameavg.data.atomic_data``). Auto-detection asks each reader's ``sniff(path)`` in ascending
``order``; the first that accepts the path wins. An explicit ``format=`` skips detection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from torch_geometric.data import Data

from frameavg.errors import ConfigError, DataError


@dataclass(frozen=True)
class ReadOptions:
    """Options every reader understands, plus reader-specific ``extra`` options."""

    keys: Mapping[str, str] | None = None
    required: tuple[str, ...] = ()
    trusted: bool = False
    dtype: torch.dtype = torch.float32
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Reader:
    name: str
    description: str
    iterate: Callable[[Path, ReadOptions], Iterator[Data]]
    sniff: Callable[[Path], bool]
    aliases: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    order: int = 100


READERS: dict[str, Reader] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, *, sniff, description: str, aliases=(), options=(), order: int = 100):
    """Decorator registering ``iterate(path, options) -> Iterator[Data]`` as reader ``name``."""

    def decorate(iterate):
        READERS[name] = Reader(name, description, iterate, sniff, tuple(aliases), tuple(options), order)
        for alias in (name, *aliases):
            _ALIASES[alias.lower()] = name
        return iterate

    return decorate


def get_reader(format: str) -> Reader:
    """The reader registered under ``format`` (a name or an alias, case-insensitive)."""
    try:
        return READERS[_ALIASES[format.lower()]]
    except KeyError:
        raise ConfigError(f"unknown format '{format}'; available: {', '.join(sorted(_ALIASES))}") from None


def detect_format(path: str | Path) -> str:
    """Name of the reader for ``path``, from its extension, folder contents or magic bytes."""
    path = check_path(path)
    for reader in sorted(READERS.values(), key=lambda r: r.order):
        if reader.sniff(path):
            return reader.name
    raise DataError(
        f"cannot detect the format (formats: {', '.join(sorted(READERS))}); pass format=... / --format",
        source=str(path),
    )


def check_path(path: str | Path) -> Path:
    """``path`` as a Path, with clear errors for a missing path or an empty file."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or directory", source=str(path))
    if path.is_file() and path.stat().st_size == 0:
        raise DataError("file is empty", source=str(path))
    return path


def read_head(path: Path, size: int = 4096) -> bytes:
    """The first ``size`` bytes of a file (b"" for folders or unreadable files)."""
    if not path.is_file():
        return b""
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return b""
