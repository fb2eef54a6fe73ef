"""Seeded random splits, index-file splits, datasets and the config-driven builder."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Subset
from torch_geometric.loader import DataLoader

from frameavg.data import (
    LmdbDataset,
    StructureDataset,
    build_datasets,
    index_split,
    load_index_file,
    open_dataset,
    random_split,
    read_structures,
    write_lmdb,
)
from frameavg.data.neighbors import RadiusGraph, neighbor_list
from frameavg.errors import ConfigError, DataError


def test_random_split_fractions_cover_everything_and_are_seeded():
    a = random_split(1000, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    assert [len(v) for v in a.values()] == [800, 100, 100]
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(1000))
    b = random_split(1000, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    c = random_split(1000, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["val"], c["val"])
    odd = random_split(7, {"train": 0.5, "val": 0.25, "test": 0.25})
    assert [len(v) for v in odd.values()] == [5, 1, 1]  # rounding remainder goes to the first split


def test_random_split_counts_rest_and_errors():
    s = random_split(100, {"train": None, "val": 10, "test": 0.2})
    assert [len(v) for v in s.values()] == [70, 10, 20]
    partial = random_split(100, {"train": 0.5, "val": 0.1})
    assert sum(len(v) for v in partial.values()) == 60
    with pytest.raises(DataError, match="add up to 120 structures but there are only 100"):
        random_split(100, {"train": 100, "val": 20})
    with pytest.raises(ConfigError, match="only one split may take the rest"):
        random_split(100, {"train": None, "val": None})
    with pytest.raises(ConfigError, match="not in"):
        random_split(100, {"train": 1.5})


def test_index_files_txt_npy_json(tmp_path):
    (tmp_path / "a.txt").write_text("# train\n0 3, 5\n7\n")
    np.save(tmp_path / "b.npy", np.array([1, 2], dtype=np.int32))
    (tmp_path / "c.json").write_text(json.dumps({"indices": [4, 6]}))
    splits = index_split(8, {"train": tmp_path / "a.txt", "val": tmp_path / "b.npy", "test": tmp_path / "c.json"})
    assert {k: v.tolist() for k, v in splits.items()} == {"train": [0, 3, 5, 7], "val": [1, 2], "test": [4, 6]}
    with pytest.raises(DataError, match=r"a.txt: indices must lie in \[0, 6\)"):
        load_index_file(tmp_path / "a.txt", 6)
    (tmp_path / "d.json").write_text("[1, 1, 2]")
    with pytest.raises(DataError, match=r"d.json: duplicate indices, e.g. \[1\]"):
        load_index_file(tmp_path / "d.json")
    (tmp_path / "e.txt").write_text("1 2.5")
    with pytest.raises(DataError, match=r"e.txt: indices must be integers"):
        load_index_file(tmp_path / "e.txt")
    (tmp_path / "f.json").write_text("[6, 7]")
    with pytest.raises(DataError, match="splits 'train' and 'test' share 1 indices, e.g. \\[7\\]"):
        index_split(8, {"train": tmp_path / "a.txt", "val": tmp_path / "b.npy", "test": tmp_path / "f.json"})


def test_in_memory_dataset_transform_does_not_touch_stored_structures(real_data):
    structures = read_structures(real_data / "oc20_is2re_samples" / "is2re_bs3.extxyz")
    dataset = StructureDataset(structures, transform=RadiusGraph(6.0, max_neighbors=40))
    item = dataset[1]
    expected, _ = neighbor_list(item.pos, item.cell[0], item.pbc[0], 6.0, 40)
    assert torch.equal(item.edge_index, expected) and "edge_index" not in structures[1]
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch.num_graphs == 3 and batch.neighbors.sum() == batch.edge_index.shape[1]


def test_open_dataset_picks_lmdb_on_disk_and_memory_otherwise(real_data, tmp_path):
    path = real_data / "rmd17_ethanol" / "train.xyz"
    in_memory = open_dataset(path, required=("energy", "forces"))
    assert isinstance(in_memory, StructureDataset) and len(in_memory) == 1000
    write_lmdb(in_memory.structures[:30], tmp_path / "eth.lmdb")
    on_disk = open_dataset(tmp_path / "eth.lmdb", transform=RadiusGraph(5.0))
    assert isinstance(on_disk, LmdbDataset) and len(on_disk) == 30
    assert on_disk[4].edge_index.shape[1] == 72  # ethanol: every atom sees the 8 others within 5 Å
    with pytest.raises(ConfigError, match="has no option"):
        open_dataset(path, targets=("U0",))


def test_build_datasets_single_path_random_split_with_graphs(real_data):
    config = {
        "path": str(real_data / "qm9_subset" / "qm9_random2000_seed0.extxyz"),
        "keys": {"energy": "U0"},
        "required": ["energy"],
        "options": {"targets": ["U0", "gap"]},
        "cutoff": 5.0,
        "max_neighbors": 30,
        "split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 1},
    }
    sets = build_datasets(config)
    assert {k: len(v) for k, v in sets.items()} == {"train": 1600, "val": 200, "test": 200}
    assert all(isinstance(s, Subset) for s in sets.values())
    assert set(sets["train"].indices).isdisjoint(sets["test"].indices)
    item = sets["val"][0]
    assert "edge_index" in item and item.energy.shape == (1,) and "gap" in item
    again = build_datasets(config)
    assert again["test"].indices == sets["test"].indices


def test_build_datasets_per_split_paths_and_index_files(real_data, tmp_path):
    folder = real_data / "oc20_is2re_samples"
    sets = build_datasets(
        {"train": str(folder / "is2re_bs8.extxyz"), "val": {"path": str(folder / "is2re_bs3.extxyz"), "dtype": "float64"},
         "keys": {"energy": "y_relaxed"}}
    )
    assert len(sets["train"]) == 8 and len(sets["val"]) == 3 and sets["val"][0].pos.dtype == torch.float64
    (tmp_path / "train.txt").write_text("0 1 2 3 4 5")
    (tmp_path / "val.txt").write_text("6 7")
    split = build_datasets({"path": str(folder / "is2re_bs8.extxyz"),
                            "split": {"train": str(tmp_path / "train.txt"), "val": str(tmp_path / "val.txt")}})
    assert split["val"].indices == [6, 7]
    with pytest.raises(ConfigError, match="unknown data config key"):
        build_datasets({"path": "x", "batchsize": 3})
    with pytest.raises(ConfigError, match="either 'path'"):
        build_datasets({"path": "x", "train": "y"})
