"""Package namespaces whose names are imported on first use (PEP 562).

A package ``__init__`` maps exported names to the modules defining them and calls
``lazy_namespace``; ``import frameavg.data`` then costs nothing until a name is used, which keeps
the command line's start-up free of torch, PyG and Lightning.
"""

from __future__ import annotations

import importlib
import sys


def lazy_namespace(package: str, exports: dict[str, str]):
    """(``__getattr__``, ``__dir__``, ``__all__``) for ``package`` exporting ``exports``
    (name -> defining module)."""
    names = sorted(exports)

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return names

    return __getattr__, __dir__, names
