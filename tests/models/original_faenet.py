"""The original ``faenet`` 0.1.3 package made importable on the current stack, for tests and
benchmarks only (frameavg itself never imports it).

As published it does not import on a current stack; ``import_original_faenet`` fixes that without
changing its model code:

* ``torch_scatter`` (undeclared dependency, needs compiling) is replaced by a stand-in module whose
  ``scatter`` is ``torch_geometric.utils.scatter`` (same semantics for the sums FAENet uses);
* its element table comes from mendeleev at runtime, which fails (mendeleev >= 1.0 has no stored
  ``atomic_volume``; ``fetch_ionization_energies`` fails under pandas 3 + SQLAlchemy 2). The stand-in
  ``fetch_table`` / ``fetch_ionization_energies`` return the raw mendeleev 0.14 values that
  frameavg ships, in mendeleev's DataFrame layout, so the original's own normalisation code runs;
* ``mp_type="updown_local_env"`` calls ``propagate(..., local_env=True)``, which PyG >= 2.5 rejects;
  ``patch_local_env`` makes that one call sum the edge states as the original intends.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import math
import sys
import types

from frameavg.models.elements import TABLE_PATH


def _raw_table_rows():
    with open(TABLE_PATH, newline="") as handle:
        return list(csv.DictReader(handle))


def _value(text: str) -> float:
    return float(text) if text.strip() else math.nan


def import_original_faenet():
    """The ``faenet`` module, patched as described above; ImportError when it is not installed."""
    if importlib.util.find_spec("faenet") is None:
        raise ImportError("faenet 0.1.3 is not installed (pip install -e '.[test]')")
    import pandas as pd

    if importlib.util.find_spec("torch_scatter") is None and "torch_scatter" not in sys.modules:
        from torch_geometric.utils import scatter

        stand_in = types.ModuleType("torch_scatter")
        stand_in.scatter = scatter
        sys.modules["torch_scatter"] = stand_in
    embedding = importlib.import_module("faenet.embedding")
    faenet = importlib.import_module("faenet")
    rows = _raw_table_rows()
    skip = {"Z", "symbol", "period", "group", "IE1", "IE2"}

    def fetch_table(name):
        assert name == "elements"
        return pd.DataFrame([
            {"atomic_number": int(r["Z"]), "period": int(r["period"]), "group_id": _value(r["group"]),
             **{k: _value(v) for k, v in r.items() if k not in skip}}
            for r in rows
        ])

    def fetch_ionization_energies(degree=1):
        return pd.DataFrame(
            [{"atomic_number": int(r["Z"]), "IE1": _value(r["IE1"]), "IE2": _value(r["IE2"])} for r in rows]
        ).set_index("atomic_number")

    embedding.fetch_table, embedding.fetch_ionization_energies = fetch_table, fetch_ionization_energies
    return faenet


def patch_local_env(model):
    """Let the original's ``updown_local_env`` blocks run on PyG >= 2.5 (see module docstring)."""
    from torch_geometric.utils import scatter

    for block in model.interaction_blocks:
        bound = block.propagate

        def propagate(edge_index, x, W, local_env=None, _bound=bound):
            if local_env:
                return scatter(W, edge_index[1], 0, x.shape[0], reduce="sum")
            return _bound(edge_index, x=x, W=W)

        block.propagate = propagate
    return model
