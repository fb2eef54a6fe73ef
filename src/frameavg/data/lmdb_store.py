"""Our LMDB format (no pickle) and safe random access to LMDB files (ours and legacy OC20).

Layout (schema version 1, documented in ``docs/data_format.md``): one LMDB data file
(``subdir=False``); key ``__frameavg__`` holds a UTF-8 JSON document with ``format``,
``schema_version``, ``length`` and user ``metadata``; keys ``b"0"`` .. ``b"<length-1>"`` (ASCII
integers) hold one structure each, encoded as::

    b"FAVD" | uint32 little-endian header length | header (UTF-8 JSON) | payload

The header lists every tensor as ``{"name", "dtype" (numpy string, e.g. "<f4"), "shape",
"offset", "nbytes"}`` into the payload (raw C-order little-endian bytes), non-tensor scalars and
strings under ``attrs``, and the CRC-32 of the payload. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import lmdb
import numpy as np
import torch
from torch_geometric.data import Data

from frameavg import __version__
from frameavg.data.atomic_data import validate_data
from frameavg.errors import DataError, FrameavgError
from frameavg.files import atomic_output

FORMAT_NAME = "frameavg-lmdb"
SCHEMA_VERSION = 1
META_KEY = b"__frameavg__"
RECORD_MAGIC = b"FAVD"
#: MDB_meta.mm_magic (0xBEEFC0DE little-endian) sits at byte 16 of every LMDB data file.
LMDB_MAGIC = b"\xde\xc0\xef\xbe"

_TORCH_TO_NUMPY = {
    torch.float16: "<f2",
    torch.float32: "<f4",
    torch.float64: "<f8",
    torch.int8: "|i1",
    torch.uint8: "|u1",
    torch.int16: "<i2",
    torch.int32: "<i4",
    torch.int64: "<i8",
    torch.bool: "|b1",
}
_NUMPY_DTYPES = set(_TORCH_TO_NUMPY.values())
_HEADER = struct.Struct("<4sI")
_INITIAL_MAP_SIZE = 1 << 28
_COMMIT_EVERY = 1000


# ----------------------------------------------------------------------------- files and envs
def is_lmdb_file(path: Path) -> bool:
    """True if ``path`` is an LMDB data file (by magic bytes)."""
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(20)[16:20] == LMDB_MAGIC


def lmdb_files(path: str | Path) -> list[Path]:
    """The LMDB data file itself, or the sorted ``*.lmdb`` files of a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.lmdb") if p.is_file())
        if not files:
            raise DataError("folder contains no *.lmdb files", source=str(path))
        return files
    return [path]


# One read-only handle per file and process: LMDB refuses a second open of the same file in a
# process, so every reader (datasets, detection, metadata) shares these. Keyed by absolute path;
# entries remember the inode and the size the index needs, re-checked on every access.
_ENVS: dict[str, tuple[lmdb.Environment, int, int]] = {}
_ENVS_PID = os.getpid()


def open_env(path: str | Path) -> lmdb.Environment:
    """The shared read-only, lock-free handle of an LMDB data file (safe in DataLoader workers).

    Checks on every call that the file was not truncated (reading pages past the end of a
    memory-mapped file kills the process with SIGBUS instead of raising) and reopens the file if
    it was replaced (``write_lmdb`` or another process). Do not close the returned handle; use
    ``release_env``.
    """
    global _ENVS_PID
    if _ENVS_PID != os.getpid():  # a forked child must never use its parent's handles
        _ENVS.clear()
        _ENVS_PID = os.getpid()
    key = os.path.abspath(path)
    try:
        stat = os.stat(key)
    except FileNotFoundError:
        release_env(key)
        raise DataError("no such file", source=str(path)) from None
    cached = _ENVS.get(key)
    if cached is not None and cached[1] != stat.st_ino:
        release_env(key)
        cached = None
    if cached is None:
        try:
            env = lmdb.open(
                key, subdir=False, readonly=True, lock=False, readahead=False, meminit=False, max_readers=1
            )
        except lmdb.Error as exc:
            raise DataError(f"cannot open LMDB (corrupted or not an LMDB file): {exc}", source=str(path)) from None
        cached = _ENVS[key] = (env, stat.st_ino, (env.info()["last_pgno"] + 1) * env.stat()["psize"])
    env, _, needed = cached
    if stat.st_size < needed:
        release_env(key)
        raise DataError(
            f"truncated LMDB: file has {stat.st_size} bytes, its index needs {needed} (incomplete copy or write?)",
            source=str(path),
        )
    return env


def release_env(path: str | Path) -> None:
    """Close this process's shared handle of ``path`` (it reopens on next use)."""
    cached = _ENVS.pop(os.path.abspath(path), None)
    if cached is not None:
        cached[0].close()


def read_meta(env: lmdb.Environment, source: Path) -> dict | None:
    """Our metadata document, or None for an LMDB not written by frameavg (legacy OC20)."""
    try:
        with env.begin() as txn:
            raw = txn.get(META_KEY)
    except lmdb.Error as exc:
        raise DataError(f"corrupted LMDB: {exc}", source=str(source)) from None
    if raw is None:
        return None
    try:
        meta = json.loads(raw.decode("utf-8"))
        version, length = int(meta["schema_version"]), int(meta["length"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise DataError("corrupted frameavg LMDB metadata", source=str(source)) from None
    if version > SCHEMA_VERSION:
        raise DataError(
            f"written with schema version {version}; this frameavg ({__version__}) reads up to "
            f"{SCHEMA_VERSION}: upgrade frameavg",
            source=str(source),
        )
    if length < 0:
        raise DataError("corrupted frameavg LMDB metadata (negative length)", source=str(source))
    return meta


def lmdb_kind(path: str | Path) -> str:
    """``"frameavg"`` if every LMDB file at ``path`` is ours, ``"legacy"`` if none is."""
    kinds = set()
    for file in lmdb_files(path):
        kinds.add("frameavg" if read_meta(open_env(file), file) is not None else "legacy")
    if len(kinds) > 1:
        raise DataError("folder mixes frameavg and legacy OC20 LMDB files", source=str(path))
    return kinds.pop()


# ----------------------------------------------------------------------------- record codec
def encode_data(data: Data) -> bytes:
    """One ``Data`` as a self-describing record (tensors as raw bytes, scalars/strings as JSON)."""
    fields, attrs, chunks, offset = [], {}, [], 0
    for name, value in data.items():
        if isinstance(value, torch.Tensor):
            if value.dtype not in _TORCH_TO_NUMPY:
                raise DataError(f"field '{name}' has unsupported dtype {value.dtype}")
            array = np.ascontiguousarray(value.detach().cpu().numpy()).astype(_TORCH_TO_NUMPY[value.dtype], copy=False)
            raw = array.tobytes()
            fields.append(
                {"name": name, "dtype": array.dtype.str, "shape": list(array.shape), "offset": offset, "nbytes": len(raw)}
            )
            chunks.append(raw)
            offset += len(raw)
        elif isinstance(value, (str, bool, int, float)) or value is None:
            attrs[name] = value
        else:
            raise DataError(f"field '{name}' of type {type(value).__name__} cannot be stored (tensors, numbers, strings)")
    payload = b"".join(chunks)
    header = json.dumps(
        {"fields": fields, "attrs": attrs, "crc32": zlib.crc32(payload)}, separators=(",", ":")
    ).encode("utf-8")
    return _HEADER.pack(RECORD_MAGIC, len(header)) + header + payload


def decode_data(blob: bytes, *, source: str | None = None, index: int | None = None) -> Data:
    """Inverse of ``encode_data``; any inconsistency is a ``DataError`` naming file and entry."""

    def fail(message: str) -> DataError:
        return DataError(f"corrupted record: {message}", source=source, index=index)

    blob = memoryview(blob)
    if len(blob) < _HEADER.size:
        raise fail("too short")
    magic, header_len = _HEADER.unpack_from(blob)
    if magic != RECORD_MAGIC or _HEADER.size + header_len > len(blob):
        raise fail("bad record header")
    try:
        header = json.loads(bytes(blob[_HEADER.size : _HEADER.size + header_len]).decode("utf-8"))
        fields, attrs, crc = header["fields"], header["attrs"], header["crc32"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise fail("unreadable record header") from None
    payload = blob[_HEADER.size + header_len :]
    if zlib.crc32(payload) != crc:
        raise fail("checksum mismatch")
    data = Data()
    for spec in fields:
        try:
            name, dtype, shape = spec["name"], spec["dtype"], tuple(spec["shape"])
            start, nbytes = int(spec["offset"]), int(spec["nbytes"])
        except (KeyError, TypeError, ValueError):
            raise fail("bad field description") from None
        if dtype not in _NUMPY_DTYPES or start < 0 or start + nbytes > len(payload):
            raise fail(f"bad field '{name}'")
        array = np.frombuffer(payload[start : start + nbytes], dtype=np.dtype(dtype))
        if array.size != math.prod(shape):
            raise fail(f"field '{name}' size does not match its shape {list(shape)}")
        data[name] = torch.from_numpy(array.reshape(shape).copy())
    for name, value in attrs.items():
        data[name] = value
    return data


def _check_storable(data: Data, index: int) -> None:
    """What is written must read back: the checks of ``atomic_data.validate_data``."""
    def fail(message):
        return DataError(message, source="input", index=index)

    if not isinstance(data, Data):
        raise fail(f"expected a torch_geometric Data, got {type(data).__name__}")
    for name in ("pos", "atomic_numbers", "natoms"):
        if not isinstance(data.get(name), torch.Tensor):
            raise fail(f"missing tensor field '{name}'")
    validate_data(data, fail, distances=True)


# ----------------------------------------------------------------------------- writing
def write_lmdb(
    datas: Iterable[Data],
    path: str | Path,
    *,
    metadata: Mapping | None = None,
    progress: bool = False,
    total: int | None = None,
) -> int:
    """Write structures to ``path`` in our LMDB format, atomically; returns the count.

    Records go to a temporary file in the same folder (``frameavg.files.atomic_output``), which
    replaces ``path`` only once everything is written and synced: readers never see a
    half-written file, an error leaves any previous file untouched, and a killed writer's
    temporary file is removed by the next write.

    Args:
        datas: iterable of ``Data`` (streamed; need not fit in memory).
        metadata: JSON-serialisable description stored with the file (source, cutoff, ...).
        progress: show a tqdm progress bar on stderr; ``total`` is its expected length.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError("output path is a folder; give a file name such as out.lmdb", source=str(path))
    count, fields, pending = 0, set(), []
    iterator = datas
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(datas, total=total, unit=" structures", desc=f"writing {path.name}", dynamic_ncols=True)
        iterator = bar
    try:
        with atomic_output(path) as tmp:
            try:  # meminit: no stale bytes on disk
                env = lmdb.open(str(tmp), subdir=False, lock=False, map_size=_INITIAL_MAP_SIZE)
            except lmdb.Error as exc:
                raise FrameavgError(f"cannot write {path}: {exc}") from None
            try:
                for data in iterator:
                    _check_storable(data, count)
                    pending.append((str(count).encode("ascii"), encode_data(data)))
                    fields.update(data.keys())
                    count += 1
                    if len(pending) >= _COMMIT_EVERY:
                        _put_all(env, pending, path)
                        pending = []
                meta = {
                    "format": FORMAT_NAME,
                    "schema_version": SCHEMA_VERSION,
                    "length": count,
                    "fields": sorted(fields),
                    "frameavg_version": __version__,
                    "metadata": dict(metadata or {}),
                }
                pending.append((META_KEY, json.dumps(meta, default=_json_default).encode("utf-8")))
                _put_all(env, pending, path)
                env.sync(True)
            finally:
                env.close()
            release_env(path)
    finally:
        if bar is not None:
            bar.close()
    return count


def _put_all(env: lmdb.Environment, items: list[tuple[bytes, bytes]], path: Path) -> None:
    """Write ``items`` in one transaction, doubling the map size whenever it is full."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in items:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)
        except lmdb.Error as exc:  # disk full, I/O error
            raise FrameavgError(f"cannot write {path}: {exc}") from None


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


# ----------------------------------------------------------------------------- random access
class LmdbSource:
    """Random access to the entries of one LMDB file or a folder of them.

    Handles come from ``open_env`` (opened lazily in each process: after a DataLoader worker
    forks, or after the object is pickled to a spawned worker), read-only and without locks.

    Args:
        path: LMDB data file, or a folder of ``*.lmdb`` files (entries concatenated in name order).
        lengths: number of entries of each file (``count_entries``).
        decode: ``decode(blob, file, key) -> Data``.
    """

    def __init__(self, path: str | Path, lengths: list[int], decode: Callable[[bytes, Path, int], Data]):
        self.files = [Path(os.path.abspath(f)) for f in lmdb_files(path)]
        self.lengths = list(lengths)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.decode = decode

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(file number, key within that file) of global entry ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} structures")
        index %= len(self)
        file = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return file, int(index - self.offsets[file])

    def raw(self, index: int) -> tuple[bytes, Path, int]:
        file, key = self.locate(index)
        try:
            with open_env(self.files[file]).begin() as txn:
                blob = txn.get(str(key).encode("ascii"))
        except lmdb.Error as exc:
            raise DataError(f"corrupted LMDB: {exc}", source=str(self.files[file]), index=key) from None
        if blob is None:
            raise DataError("entry missing (corrupted or incomplete LMDB)", source=str(self.files[file]), index=key)
        return blob, self.files[file], key

    def __getitem__(self, index: int) -> Data:
        blob, file, key = self.raw(index)
        return self.decode(blob, file, key)

    def close(self) -> None:
        """Release this process's handles of the files (reopened if used again)."""
        for file in self.files:
            release_env(file)

    def stream(self) -> Iterator[Data]:
        """Every entry in order, releasing the handles at the end (the readers' ``iterate``)."""
        try:
            for index in range(len(self)):
                yield self[index]
        finally:
            self.close()


def count_entries(path: Path, length_of: Callable[[lmdb.Environment, Path], int]) -> list[int]:
    """Entries of each LMDB file at ``path`` (``length_of(env, file)`` reads one file's count)."""
    return [length_of(open_env(file), file) for file in lmdb_files(path)]
