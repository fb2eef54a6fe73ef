"""Plugins: the user's own modules that register models and readers (``plugins:`` in a config).

A plugin is any importable module (installed, or its folder on ``PYTHONPATH``) that registers what
it defines when it is imported: ``@frameavg.models.register_model("name")`` on a model class,
``@frameavg.data.readers.registry.register("name", sniff=..., description=...)`` on a reader.
Training imports a config's plugins before it checks the model section and reads data; loading a
checkpoint imports the plugins saved in its config (``training.config.checkpoint_config``), so
``frameavg test|predict|symmetry --checkpoint`` and the ASE calculator find them too. See
docs/extending.md.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Iterable

from frameavg.errors import ConfigError


def import_plugins(names: Iterable[str], where: str = "config") -> list[ModuleType]:
    """Import every module of ``names`` (once per process, as ``import`` does); a one-line
    ``ConfigError`` naming the module and the exception when one fails to import."""
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except Exception as exc:  # the plugin's own errors too (a syntax error, a duplicate name)
            hint = ""
            if isinstance(exc, ModuleNotFoundError) and f"{name}.".startswith(f"{exc.name}."):
                hint = "; is its folder on PYTHONPATH?"
            raise ConfigError(f"{where}: cannot import plugin '{name}' ({type(exc).__name__}: {exc}{hint})") from exc
    return modules
