"""Reader for files ``ase.io`` reads: extxyz/xyz, ASE trajectories (.traj), and any other format
ASE recognises (CIF, POSCAR, ...; detected last, by ``ase.io.formats.filetype``).

Labels come from the calculator results ASE attaches (energy, forces, stress), then ``info``
(per structure) and ``arrays`` (per atom); map other names with ``keys={"energy": "U0"}``. A plain
XYZ comment line that is just a number becomes the label ``comment_value`` (units unknown: map it
explicitly, e.g. ``keys={"energy": "comment_value"}``, after converting to eV if needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import ase.io
from ase.io.formats import filetype, ioformats
from torch_geometric.data import Data

from frameavg.data.readers.registry import ReadOptions, register
from frameavg.errors import DataError

#: ASE format for our well-known extensions (plain .xyz goes through the extxyz parser, which
#: also reads plain XYZ).
EXTENSIONS = {".xyz": "extxyz", ".extxyz": "extxyz", ".traj": "traj"}
#: ASE formats read by other readers (ASE databases) or not structures.
_NOT_HERE = {"db", "json", "postgresql", "mysql"}


def sniff(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in EXTENSIONS


def sniff_any(path: Path) -> bool:
    """Last resort: whatever ``ase.io`` recognises from the name or content."""
    if not path.is_file():
        return False
    try:
        name = filetype(str(path), read=True)
        return name in ioformats and ioformats[name].can_read and name not in _NOT_HERE
    except Exception:  # ASE raises various errors for unknown files
        return False


def iterate_ase(path: Path, options: ReadOptions, ase_format: str | None = None) -> Iterator[Data]:
    """Validated ``Data`` for every frame of an ASE-readable file (streamed)."""
    source = str(path)
    for index, atoms in iread_frames(source, ase_format or EXTENSIONS.get(path.suffix.lower())):
        _bare_number_comment(atoms)
        yield options.to_data(atoms, source=source, index=index)


def iread_frames(source: str, ase_format: str | None) -> Iterator[tuple[int, object]]:
    """(index, ``ase.Atoms``) of every frame of ``source``, streamed by ``ase.io.iread``; a parse
    error is a ``DataError`` naming the frame, and a file without frames one too."""
    frames = ase.io.iread(source, index=":", format=ase_format)
    index = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except Exception as exc:
            raise DataError(describe_parse_error(exc), source=source, index=index) from None
        yield index, atoms
        index += 1
    if index == 0:
        raise DataError("no structures found", source=source)


def _bare_number_comment(atoms) -> None:
    """Plain XYZ files often carry a bare number (an energy) as the comment line, which ASE turns
    into ``info = {"-97208.4": True}``; keep it as the label ``comment_value`` instead."""
    for key, value in list(atoms.info.items()):
        if value is True:
            try:
                number = float(key)
            except ValueError:
                continue
            del atoms.info[key]
            atoms.info["comment_value"] = number


def describe_parse_error(exc: Exception) -> str:
    """One line for an exception raised by an ASE parser."""
    if isinstance(exc, KeyError):
        return f"unknown element symbol {exc.args[0]!r}" if exc.args else "unknown element symbol"
    return f"cannot parse ({type(exc).__name__}: {exc})"


@register("ase", sniff=sniff)
def iterate(path: Path, options: ReadOptions) -> Iterator[Data]:
    return iterate_ase(path, options)


@register("ase-other", sniff=sniff_any)
def iterate_other(path: Path, options: ReadOptions) -> Iterator[Data]:
    return iterate_ase(path, options, ase_format=filetype(str(path), read=True))
