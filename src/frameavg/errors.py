"""Exceptions users see. The CLI prints them as one line on stderr (traceback only with --debug)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FrameavgError(Exception):
    """Base class of every error frameavg raises on purpose (bad input, bad config, ...)."""


class DataError(FrameavgError, ValueError):
    """Invalid or unreadable input data; names the file and the structure when known."""

    def __init__(self, message: str, *, source: str | None = None, index: int | None = None):
        self.source = source
        self.index = index
        where = []
        if source is not None:
            where.append(str(source))
        if index is not None:
            where.append(f"structure {index}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ConfigError(FrameavgError, ValueError):
    """Invalid configuration (unknown key, bad value)."""


class TrainingError(FrameavgError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); checkpoints already written are kept."""


def did_you_mean(given, options: Iterable, prefix: str = "") -> str:
    """``"; did you mean '<prefix><closest>'?"`` for the option closest to ``given``, or ``""`` when
    none is close (the hint every "unknown ..." error ends with)."""
    close = difflib.get_close_matches(str(given), [str(option) for option in options], n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def renamed_keyword(old_value, old: str, new: str, new_value):
    """The value of a keyword argument that was renamed from ``old`` to ``new``: ``old_value`` (with
    a ``FutureWarning``) when the caller still wrote ``old=...``, else ``new_value``."""
    if old_value is None:
        return new_value
    import warnings

    warnings.warn(f"{old}= is deprecated; write {new}=", FutureWarning, stacklevel=3)
    return old_value
