"""The shared reader registry: each reader module registers an iterator and a cheap sniff under a
name of ``catalog.FORMATS`` (which holds the description, aliases, options and detection order).
A reader of a format the catalog does not know (a plugin's, see docs/extending.md) passes its
description, aliases, options and order to ``register`` itself.

A reader turns one path (file or folder) into an iterator of validated ``Data`` objects (see
``frameavg.data.atomic_data``). Auto-detection asks each reader's ``sniff(path)`` in ascending
``order``; the first that accepts the path wins. An explicit ``format=`` skips detection. Reader
modules are imported on first use (``load_readers``), so importing this package stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from torch_geometric.data import Data

from frameavg.data.readers.catalog import BY_NAME, FORMATS
from frameavg.errors import ConfigError, DataError, did_you_mean


@dataclass(frozen=True)
class ReadOptions:
    """Options every reader understands, plus reader-specific ``extra`` options.

    tags: tag convention (``atomic_data.TAG_CONVENTIONS``: auto, oc20, ase, ignore)."""

    keys: Mapping[str, str] | None = None
    required: tuple[str, ...] = ()
    trusted: bool = False
    dtype: torch.dtype = torch.float32
    extra: Mapping[str, object] = field(default_factory=dict)
    tags: str = "auto"

    def to_data(self, atoms, *, source: str, index: int | None) -> Data:
        """``atomic_data.atoms_to_data`` with these options (the readers' one conversion path)."""
        from frameavg.data.atomic_data import atoms_to_data

        return atoms_to_data(atoms, keys=self.keys, required=self.required, source=source, index=index,
                             dtype=self.dtype, tags=self.tags)


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
_ALIASES = {alias.lower(): info.name for info in FORMATS for alias in (info.name, *info.aliases)}


def register(name: str, *, sniff: Callable[[Path], bool], description: str | None = None,
             aliases: tuple[str, ...] = (), options: tuple[str, ...] = (), order: int = 100,
             replace: bool = False):
    """Decorator registering ``iterate(path, options) -> Iterator[Data]`` as reader ``name``.

    ``sniff(path) -> bool`` must be cheap (extension, a few bytes). A format of ``catalog.FORMATS``
    takes its description, aliases, options and order from there; any other format gives
    ``description`` (one line), ``aliases`` (other names for ``format=``), ``options`` (the
    reader-specific options it reads from ``ReadOptions.extra``) and ``order`` (auto-detection asks
    readers in ascending order: the built-in ones use 5..60, ASE's catch-all 1000). A name or alias
    already taken is a ``ConfigError`` unless ``replace`` (the same function again is a no-op)."""
    if name in BY_NAME:
        if description is not None or aliases or options:
            raise ConfigError(f"reader '{name}' is described in catalog.FORMATS; register it with sniff= only")
        info = BY_NAME[name]
        description, aliases, options, order = info.description, info.aliases, info.options, info.order
    elif not description:
        raise ConfigError(f"reader '{name}' is not in catalog.FORMATS: give register(..., description='one line')")
    aliases, options = tuple(aliases), tuple(options)
    taken = {alias.lower(): _ALIASES[alias.lower()] for alias in (name, *aliases) if alias.lower() in _ALIASES}
    clash = sorted(alias for alias, owner in taken.items() if owner != name)
    if clash and not replace:
        raise ConfigError(f"reader '{name}': name(s) {', '.join(clash)} already taken by reader(s) "
                          f"{', '.join(sorted({taken[a] for a in clash}))}; choose others or pass replace=True")

    def decorate(iterate):
        old = READERS.get(name)
        if old is not None and not replace and _qualified(old.iterate) != _qualified(iterate):
            raise ConfigError(f"reader '{name}' is already registered ({_qualified(old.iterate)}); choose another "
                              f"name or pass replace=True")
        READERS[name] = Reader(name, description, iterate, sniff, aliases, options, order)
        _ALIASES.update({alias.lower(): name for alias in (name, *aliases)})
        return iterate

    return decorate


def _qualified(function) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', function)}"


def load_readers() -> dict[str, Reader]:
    """Import every reader module of the catalog (once) and return the registry."""
    import importlib

    for info in FORMATS:
        if info.name not in READERS:
            importlib.import_module(f"frameavg.data.readers.{info.module}")
    return READERS


def get_reader(format: str) -> Reader:
    """The reader registered under ``format`` (a name or an alias, case-insensitive)."""
    name = _ALIASES.get(str(format).lower())
    if name is None:
        raise ConfigError(f"unknown format '{format}'{did_you_mean(str(format).lower(), _ALIASES)} "
                          f"(available: {', '.join(sorted(_ALIASES))})")
    return load_readers()[name]


def detect_format(path: str | Path) -> str:
    """Name of the reader for ``path``, from its extension, folder contents or magic bytes."""
    path = check_path(path)
    for reader in sorted(load_readers().values(), key=lambda r: r.order):
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
