"""Atomic file output: every file frameavg writes appears whole or not at all.

``atomic_output(path)`` hands out a temporary path in the same folder (``.NAME.tmp-PID-XXXX``),
and moves it over ``path`` (``os.replace``) only when the block finishes without an error. The
result gets the permissions of a normally created file (``0o666`` minus the umask). An error
removes the temporary file; temporary files left by killed processes (their PID is gone) are
removed by the next write of the same path. Readers never list them: they start with a dot and
end in ``.tmp-…``, not in a data extension.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from frameavg.errors import FrameavgError


def temporary_name(path: Path) -> Path:
    """A fresh temporary path beside ``path`` owned by this process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files of ``path`` whose writing process no longer exists."""
    removed = []
    for candidate in path.parent.glob(f".{path.name}.tmp-*"):
        pid_text = candidate.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        try:
            candidate.unlink()
            removed.append(candidate)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Write to the yielded temporary path; it replaces ``path`` when the block succeeds.

    Errors creating the folder or writing (read-only folder, full disk) become one-line
    ``FrameavgError``s naming ``path``."""
    path = Path(path)
    if path.is_dir():
        raise FrameavgError(f"{path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FrameavgError(f"cannot create the folder of {path}: {exc.strerror or exc}") from None
    remove_stale_temporaries(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FrameavgError(f"{path}: nothing was written")
        os.chmod(tmp, default_file_mode())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise FrameavgError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
