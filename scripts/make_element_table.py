"""Write ``src/frameavg/models/data/elements.csv`` (Z = 1..100) from a mendeleev element database.

Run once, offline; frameavg never imports mendeleev. The shipped table was made from the SQLite
database inside the ``mendeleev==0.14.0`` wheel (the version current when ``faenet`` 0.1.3 was
released; 0.12.1 to 0.17.0 hold identical values for these columns)::

    pip download mendeleev==0.14.0 --no-deps -d /tmp/mendeleev && cd /tmp/mendeleev
    unzip -q mendeleev-0.14.0-py3-none-any.whl
    python scripts/make_element_table.py /tmp/mendeleev/mendeleev/elements.db

mendeleev >= 1.0 dropped the stored ``atomic_volume`` column (it became atomic_weight / density,
14,000 cm^3/mol for hydrogen), and 0.19 updated the ionisation energies; the script refuses a
database without the stored column. The CSV holds raw values in mendeleev's units (empty = missing);
``frameavg.models.elements`` z-scores them at load time exactly as faenet's ``PhysEmbedding`` does.
"""

from __future__ import annotations

import argparse
import csv
import sqlite3
from pathlib import Path

from frameavg.models.elements import PROPERTY_NAMES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "frameavg" / "models" / "data" / "elements.csv"
MAX_Z = 100

# Columns of the mendeleev ``elements`` table used by FAENet, in faenet's order (IE1, IE2 follow).
ELEMENT_COLUMNS = PROPERTY_NAMES[:-2]


def read_database(path: Path) -> list[dict]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    columns = {row[1] for row in connection.execute("pragma table_info(elements)")}
    missing = [c for c in ELEMENT_COLUMNS if c not in columns]
    if missing:
        raise SystemExit(f"{path}: no stored column(s) {missing}; use the database of mendeleev < 1.0")
    rows = connection.execute(
        f"select atomic_number, symbol, period, group_id, {', '.join(ELEMENT_COLUMNS)} "
        f"from elements where atomic_number <= {MAX_Z} order by atomic_number"
    ).fetchall()
    ie_columns = {row[1] for row in connection.execute("pragma table_info(ionizationenergies)")}
    if "degree" in ie_columns:  # mendeleev < 0.19
        query = "select atomic_number, degree, energy from ionizationenergies"
    else:
        query = "select atomic_number, ion_charge + 1, ionization_energy from ionizationenergies"
    ionisation = {(z, degree): energy for z, degree, energy in connection.execute(query)}
    table = []
    for z, symbol, period, group, *values in rows:
        record = {"Z": z, "symbol": symbol, "period": period, "group": group}
        record.update(zip(ELEMENT_COLUMNS, values))
        record["IE1"] = ionisation.get((z, 1))
        record["IE2"] = ionisation.get((z, 2))
        table.append(record)
    if [r["Z"] for r in table] != list(range(1, MAX_Z + 1)):
        raise SystemExit(f"{path}: elements 1..{MAX_Z} are not all present")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database", type=Path, help="mendeleev elements.db (SQLite)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    table = read_database(args.database)
    header = ["Z", "symbol", "period", "group", *ELEMENT_COLUMNS, "IE1", "IE2"]
    with open(args.out, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for record in table:
            writer.writerow(["" if record[k] is None else repr(record[k]) if isinstance(record[k], float)
                             else record[k] for k in header])
    print(f"wrote {len(table)} elements to {args.out}")


if __name__ == "__main__":
    main()
