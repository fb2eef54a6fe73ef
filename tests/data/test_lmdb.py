"""Our LMDB format (round trip, workers, atomic writes) and legacy OC20 LMDBs (pickles, trusted)."""

import os
import pickle

import lmdb
import numpy as np
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from frameavg.data import LmdbDataset, detect_format, read_structures, write_lmdb
from frameavg.data.lmdb_store import META_KEY, RECORD_MAGIC, release_env
from frameavg.errors import DataError


def _assert_same(a: Data, b: Data):
    assert sorted(a.keys()) == sorted(b.keys())
    for key in a.keys():
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype, key
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def oc20(real_data):
    folder = real_data / "oc20_is2re_samples"
    return read_structures(folder / "is2re_bs3.extxyz") + read_structures(folder / "is2re_bs8.extxyz")


# ----------------------------------------------------------------------------- our format
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extxyz_to_lmdb_to_dataset_identical_with_two_workers(real_data, tmp_path, dtype):
    path = real_data / "rmd17_ethanol" / "test_MD.xyz"
    structures = read_structures(path, dtype=dtype)[:40]
    out = tmp_path / "ethanol.lmdb"
    assert write_lmdb(structures, out, metadata={"source": str(path)}) == 40
    assert detect_format(out) == "frameavg-lmdb"
    dataset = LmdbDataset(out, dtype=dtype)
    assert len(dataset) == 40 and dataset.metadata["metadata"] == {"source": str(path)}
    assert dataset.metadata["schema_version"] == 1 and dataset.metadata["length"] == 40
    loader = DataLoader(dataset, batch_size=7, num_workers=2, shuffle=False)
    batches = list(loader)
    expected = list(DataLoader(structures, batch_size=7, shuffle=False))
    assert len(batches) == len(expected) == 6
    for got, want in zip(batches, expected):
        _assert_same(got, want)
    for i in (0, 17, 39, -1):
        _assert_same(dataset[i], structures[i])
    respawned = pickle.loads(pickle.dumps(dataset))  # as a spawned worker receives it; # trusted
    _assert_same(respawned[5], structures[5])


def test_oc20_round_trip_keeps_tags_fixed_labels_and_strings(real_data, tmp_path, oc20):
    xu = read_structures(real_data / "xu_kitchin_adsorption")[:5]  # carries a string field 'name'
    out = tmp_path / "mixed.lmdb"
    write_lmdb(oc20 + xu, out)
    back = read_structures(out)
    for a, b in zip(oc20 + xu, back):
        _assert_same(a, b)
    assert back[-1].name == xu[-1].name


def test_lmdb_key_mapping_required_and_typo(tmp_path, oc20):
    out = tmp_path / "oc20.lmdb"
    write_lmdb(oc20, out)
    mapped = read_structures(out, keys={"energy": "y_relaxed"}, required=("energy",))
    assert [d.energy.item() for d in mapped] == [d.y_relaxed.item() for d in oc20]
    assert "y_relaxed" not in mapped[0]
    with pytest.raises(DataError, match=r"oc20.lmdb, structure 0: key 'y_relaxd' .* did you mean 'y_relaxed'"):
        read_structures(out, keys={"energy": "y_relaxd"})
    with pytest.raises(DataError, match=r"oc20.lmdb, structure 0: missing required label\(s\) forces"):
        read_structures(out, required=("forces",))


def test_several_readers_of_one_file_and_rewrites_in_one_process(tmp_path, oc20):
    out = tmp_path / "shared.lmdb"
    write_lmdb(oc20[:4], out)
    first, second = LmdbDataset(out), LmdbDataset(out)
    _assert_same(first[1], second[1])
    assert first.metadata["length"] == 4 and len(read_structures(out)) == 4
    _assert_same(first[3], oc20[3])
    write_lmdb(oc20[4:], out)  # replaced while datasets are open: they see the new file
    _assert_same(first[0], oc20[4])
    os.truncate(out, out.stat().st_size // 2)
    with pytest.raises(DataError, match="truncated LMDB"):
        second[0]


def test_write_is_atomic_and_failure_keeps_previous_file(tmp_path, oc20):
    out = tmp_path / "data.lmdb"
    write_lmdb(oc20[:2], out)
    before = out.read_bytes()

    def broken():
        yield oc20[0]
        raise RuntimeError("reader died half-way")

    with pytest.raises(RuntimeError):
        write_lmdb(broken(), out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.lmdb"]  # no temp or lock files left
    with pytest.raises(DataError, match="structure 1: missing tensor field 'pos'"):
        write_lmdb([oc20[0], Data(x=torch.zeros(3))], out)
    assert out.read_bytes() == before


def test_map_grows_beyond_initial_size(tmp_path, monkeypatch, oc20):
    import frameavg.data.lmdb_store as store

    monkeypatch.setattr(store, "_INITIAL_MAP_SIZE", 64 * 1024)
    out = tmp_path / "grow.lmdb"
    assert write_lmdb(oc20 * 6, out) == 66
    _assert_same(LmdbDataset(out)[65], oc20[10])


def test_truncated_lmdb_is_a_clear_error(tmp_path, oc20):
    out = tmp_path / "cut.lmdb"
    write_lmdb(oc20, out)
    os.truncate(out, out.stat().st_size // 2)
    with pytest.raises(DataError, match=r"cut.lmdb: truncated LMDB"):
        read_structures(out)
    os.truncate(out, 100)
    with pytest.raises(DataError, match=r"cut.lmdb: (truncated LMDB|cannot open LMDB)"):
        read_structures(out, format="frameavg-lmdb")


def test_corrupted_record_is_detected_by_checksum(tmp_path, oc20):
    out = tmp_path / "flip.lmdb"
    write_lmdb(oc20[:3], out)
    raw = bytearray(out.read_bytes())
    start = raw.index(RECORD_MAGIC)
    while start >= 0:  # damage the payload of every record
        payload = start + 8 + int.from_bytes(raw[start + 4 : start + 8], "little")
        raw[payload + 16 : payload + 24] = b"\xff" * 8
        start = raw.find(RECORD_MAGIC, start + 1)
    out.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"flip.lmdb, structure 0: corrupted record: checksum mismatch"):
        read_structures(out)


def test_newer_schema_and_missing_entries_are_refused(tmp_path, oc20):
    out = tmp_path / "meta.lmdb"
    write_lmdb(oc20[:2], out)
    env = lmdb.open(str(out), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(META_KEY, b'{"format": "frameavg-lmdb", "schema_version": 99, "length": 2}')
    env.close()
    with pytest.raises(DataError, match="schema version 99"):
        read_structures(out)
    release_env(out)  # LMDB allows one open handle per file and process
    env = lmdb.open(str(out), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(META_KEY, b'{"format": "frameavg-lmdb", "schema_version": 1, "length": 3}')
    env.close()
    with pytest.raises(DataError, match=r"meta.lmdb, structure 2: entry missing"):
        read_structures(out)


# ----------------------------------------------------------------------------- legacy OC20
def _legacy_object(d: Data, index: int, old_layout: bool = False, s2ef: bool = False):
    """A PyG Data as OCP's preprocessing pickled it (legacy keys, float atomic numbers)."""
    fields = dict(
        pos=d.pos.clone(),
        atomic_numbers=d.atomic_numbers.float(),
        cell=d.cell.clone(),
        natoms=int(d.natoms),
        tags=d.tags.clone(),
        fixed=d.fixed.float(),
        sid=int(d.sid),
        fid=index,
        edge_index=torch.zeros(2, 3, dtype=torch.long),  # precomputed edges: dropped on reading
        cell_offsets=torch.zeros(3, 3),
        distances=torch.ones(3),
    )
    if s2ef:
        fields.update(y=float(d.y_init), force=d.force_init.clone())
    else:
        fields.update(y_init=float(d.y_init), y_relaxed=float(d.y_relaxed), pos_relaxed=d.pos_relaxed.clone())
    if old_layout:  # PyG < 2.0 kept attributes directly in __dict__ (no _store)
        obj = Data.__new__(Data)
        obj.__dict__.update(fields)
        return obj
    return Data(**fields)


def _write_legacy(path, structures, with_length=True, **kwargs):
    env = lmdb.open(str(path), subdir=False, map_size=1 << 30, lock=False)
    with env.begin(write=True) as txn:
        for i, d in enumerate(structures):
            txn.put(f"{i}".encode("ascii"), pickle.dumps(_legacy_object(d, i, **kwargs), protocol=-1))
        if with_length:
            txn.put(b"length", pickle.dumps(len(structures), protocol=-1))
    env.close()


def _check_is2re(read, original):
    assert len(read) == len(original)
    for got, want in zip(read, original):
        torch.testing.assert_close(got.pos, want.pos)
        assert got.atomic_numbers.dtype == torch.long and torch.equal(got.atomic_numbers, want.atomic_numbers)
        torch.testing.assert_close(got.cell, want.cell)
        assert got.pbc.all()
        assert torch.equal(got.tags, want.tags) and torch.equal(got.fixed, want.fixed)
        assert got.energy.item() == pytest.approx(want.y_relaxed.item(), rel=1e-6)  # IS2RE: energy = y_relaxed
        assert got.y_init.item() == pytest.approx(want.y_init.item(), rel=1e-6)
        torch.testing.assert_close(got.pos_relaxed, want.pos_relaxed)
        assert got.sid.tolist() == want.sid.tolist()
        assert "edge_index" not in got and "distances" not in got and "y_relaxed" not in got


@pytest.mark.parametrize("old_layout", [False, True], ids=["pyg2", "pyg1-dict-layout"])
def test_legacy_oc20_lmdb_reads_back_with_fields_mapped(tmp_path, oc20, old_layout):
    path = tmp_path / "is2re.lmdb"
    _write_legacy(path, oc20, old_layout=old_layout)
    assert detect_format(path) == "oc20-lmdb"
    read = read_structures(path, trusted=True)
    _check_is2re(read, oc20)
    assert [d.fid.item() for d in read] == list(range(len(oc20)))


def test_legacy_s2ef_y_and_force_map_to_energy_and_forces(tmp_path, oc20):
    path = tmp_path / "s2ef.lmdb"
    _write_legacy(path, oc20, with_length=False, s2ef=True)
    read = read_structures(path, trusted=True, required=("energy", "forces"))
    for got, want in zip(read, oc20):
        assert got.energy.item() == pytest.approx(want.y_init.item(), rel=1e-6)
        torch.testing.assert_close(got.forces, want.force_init)
        assert "y" not in got and "force" not in got


def test_legacy_folder_of_lmdbs_and_dataset_with_workers(tmp_path, oc20):
    folder = tmp_path / "is2re"
    folder.mkdir()
    _write_legacy(folder / "data.0000.lmdb", oc20[:3])
    _write_legacy(folder / "data.0001.lmdb", oc20[3:], with_length=False)
    dataset = LmdbDataset(folder, trusted=True)
    assert len(dataset) == len(oc20) and dataset.metadata == {}
    _check_is2re([pickle.loads(pickle.dumps(dataset))[4]], oc20[4:5])  # trusted
    batches = list(DataLoader(dataset, batch_size=4, num_workers=2))
    assert sum(b.num_graphs for b in batches) == len(oc20)
    _check_is2re([dataset[i] for i in range(len(dataset))], oc20)


def test_legacy_lmdb_refused_without_trusted(tmp_path, oc20):
    path = tmp_path / "is2re.lmdb"
    _write_legacy(path, oc20[:2])
    for call in (lambda: read_structures(path), lambda: LmdbDataset(path)):
        with pytest.raises(DataError, match=r"is2re.lmdb: legacy OC20 LMDB entries are Python pickles.*trusted=True"):
            call()


def test_corrupted_and_truncated_legacy_lmdb(tmp_path, oc20):
    path = tmp_path / "bad.lmdb"
    _write_legacy(path, oc20[:3])
    env = lmdb.open(str(path), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"1", pickle.dumps(_legacy_object(oc20[1], 1))[:-40])
    env.close()
    with pytest.raises(DataError, match=r"bad.lmdb: corrupted legacy entry 1: cannot unpickle"):
        read_structures(path, trusted=True)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(DataError, match=r"bad.lmdb: truncated LMDB"):
        read_structures(path, trusted=True)


def test_no_ungated_pickle_loads_in_the_package():
    import frameavg

    root = os.path.dirname(frameavg.__file__)
    needle = "pickle" + ".loads("  # spelled apart so that this test is not itself a match
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                for line in open(os.path.join(folder, name)):
                    if needle in line and not line.strip().startswith(("#", '"', "'")):
                        assert line.rstrip().endswith("# trusted"), f"{name}: {line.strip()}"
