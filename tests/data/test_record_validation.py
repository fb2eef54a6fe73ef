"""Bad input files give one clear DataError naming the file and the structure (one test each).

Each file is a real structure (rMD17 ethanol / OC20 samples) with one defect written into it.
Corrupted and truncated LMDBs are covered in test_lmdb.py.
"""

import ase.io
import numpy as np
import pytest

from frameavg.data import read_structures
from frameavg.errors import DataError


@pytest.fixture(scope="module")
def ethanol_text(real_data):
    """The first two ethanol frames as extxyz text (lines per frame: 2 + 9 atoms)."""
    lines = (real_data / "rmd17_ethanol" / "train.xyz").read_text().splitlines(keepends=True)
    return lines[:11], lines[11:22]


def _write(tmp_path, name, *frames):
    path = tmp_path / name
    path.write_text("".join("".join(f) for f in frames))
    return path


def _replace_atom_line(frame, atom, column, value):
    frame = list(frame)
    parts = frame[2 + atom].split()
    parts[column] = value
    frame[2 + atom] = " ".join(parts) + "\n"
    return frame


def test_empty_file(tmp_path):
    path = tmp_path / "empty.extxyz"
    path.write_text("")
    with pytest.raises(DataError, match=r"empty.extxyz: file is empty"):
        read_structures(path)


def test_file_with_only_blank_lines(tmp_path):
    path = tmp_path / "blank.xyz"
    path.write_text("\n\n")
    with pytest.raises(DataError, match=r"blank.xyz: no structures found"):
        read_structures(path)


def test_structure_with_zero_atoms(tmp_path, ethanol_text):
    first, _ = ethanol_text
    path = _write(tmp_path, "zero.xyz", first, ["0\n", first[1]])
    with pytest.raises(DataError, match=r"zero.xyz, structure 1: structure has zero atoms"):
        read_structures(path)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_positions(tmp_path, ethanol_text, value):
    first, second = ethanol_text
    path = _write(tmp_path, "nan.xyz", first, _replace_atom_line(second, 4, 2, value))
    with pytest.raises(DataError, match=r"nan.xyz, structure 1: non-finite position \(NaN or inf\) for atom 4"):
        read_structures(path)


def test_unknown_element_symbol(tmp_path, ethanol_text):
    first, second = ethanol_text
    path = _write(tmp_path, "symbol.xyz", first, _replace_atom_line(second, 3, 0, "Xx"))
    with pytest.raises(DataError, match=r"symbol.xyz, structure 1: unknown element symbol 'Xx'"):
        read_structures(path)


def test_atomic_number_above_118(tmp_path, real_data):
    frames = ase.io.read(real_data / "rmd17_ethanol" / "train.xyz", ":3")
    lines = []
    for k, atoms in enumerate(frames):  # extxyz with an integer Z column instead of symbols
        numbers = atoms.numbers.copy()
        if k == 2:
            numbers[0] = 119
        lines += [f"{len(atoms)}\n", 'Properties=Z:I:1:pos:R:3 pbc="F F F"\n']
        lines += [f"{z} {x:.8f} {y:.8f} {w:.8f}\n" for z, (x, y, w) in zip(numbers, atoms.positions)]
    path = tmp_path / "z.extxyz"
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=r"z.extxyz, structure 2: unknown element: atomic number 119"):
        read_structures(path)


def test_malformed_lattice(tmp_path, real_data):
    text = (real_data / "oc20_is2re_samples" / "is2re_bs3.extxyz").read_text()
    header_end = text.index("\n", text.index("\n") + 1)
    header = text[: header_end]
    start = header.index('Lattice="') + len('Lattice="')
    numbers = header[start : header.index('"', start)].split()
    bad = header[:start] + " ".join(numbers[:8]) + header[header.index('"', start) :]
    path = tmp_path / "lattice.extxyz"
    path.write_text(bad + text[header_end:])
    with pytest.raises(DataError, match=r"lattice.extxyz, structure 0: cannot parse .*Lattice"):
        read_structures(path)


def test_singular_cell_with_pbc(tmp_path, real_data):
    frames = ase.io.read(real_data / "oc20_is2re_samples" / "is2re_bs3.extxyz", ":")
    cell = frames[1].cell.array.copy()
    cell[2] = cell[0] + cell[1]  # third vector in the plane of the first two
    frames[1].set_cell(cell)
    path = tmp_path / "singular.extxyz"
    ase.io.write(path, frames)
    with pytest.raises(DataError, match=r"singular.extxyz, structure 1: singular cell for periodic axes \[0, 1, 2\]"):
        read_structures(path)


def test_missing_requested_label(real_data):
    path = real_data / "qm7" / "qm7_first300.extxyz"
    with pytest.raises(DataError, match=r"qm7_first300.extxyz, structure 0: missing required label\(s\) forces"):
        read_structures(path, keys={"energy": "hof_pbe0_kcal_mol"}, required=("energy", "forces"))


def test_key_mapping_typo(real_data):
    path = real_data / "qm7" / "qm7_first300.extxyz"
    with pytest.raises(
        DataError, match=r"qm7_first300.extxyz, structure 0: key 'hof_pbe0_kcal_mo' .* did you mean 'hof_pbe0_kcal_mol'"
    ):
        read_structures(path, keys={"energy": "hof_pbe0_kcal_mo"})


def test_truncated_frame(tmp_path, ethanol_text):
    first, second = ethanol_text
    path = _write(tmp_path, "cut.xyz", first, second[:-3])
    with pytest.raises(DataError, match=r"cut.xyz, structure 1: cannot parse"):
        read_structures(path)


def test_not_a_database(tmp_path, real_data):
    raw = (real_data / "oxides_eos" / "oxides.db").read_bytes()
    path = tmp_path / "cut.db"
    path.write_bytes(raw[:16] + bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"cut.db.*cannot read ASE database"):
        read_structures(path)


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.xyz: no such file or directory"):
        read_structures(tmp_path / "nowhere.xyz")
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01 not a structure file")
    with pytest.raises(DataError, match=r"notes.bin: cannot detect the format"):
        read_structures(tmp_path / "notes.bin")


def test_coincident_atoms(tmp_path, ethanol_text):
    """Two atoms 0.03 Å apart pass no reader (they used to fail only at prediction)."""
    first, second = ethanol_text
    frame = list(second)
    parts = frame[2 + 4].split()
    x, y, z = (float(v) for v in frame[2 + 1].split()[1:4])
    frame[2 + 4] = " ".join([parts[0], f"{x + 0.03:.8f}", f"{y:.8f}", f"{z:.8f}"] + parts[4:]) + "\n"
    path = _write(tmp_path, "overlap.xyz", first, frame)
    with pytest.raises(DataError, match=r"overlap.xyz, structure 1: atoms 1 and 4 are 0.03 Å apart \(closer than 0.1 Å"):
        read_structures(path)


@pytest.mark.parametrize("skew", [0.0, 0.97])
def test_coincident_across_the_cell_boundary(tmp_path, skew):
    """An atom at the cell's far corner coincides with another's periodic image, in an orthogonal
    and in a strongly skewed cell."""
    cell = np.array([[4.0, 0, 0], [4.0 * skew, 4.0, 0], [0, 0, 4.0]])
    near = np.array([0.01, 0.02, 0.0])
    image = near + cell[0] + cell[1] - [0.03, 0.01, 0.0]  # 0.04 Å from near's image
    atoms = ase.Atoms("CuO", positions=[near, image], cell=cell, pbc=True)
    path = tmp_path / "boundary.extxyz"
    ase.io.write(path, atoms)
    with pytest.raises(DataError, match=r"atoms 0 and 1 are 0.0\d+ Å apart"):
        read_structures(path)
    atoms.positions[1] += [1.0, 1.0, 1.0]
    ase.io.write(path, atoms)
    assert len(read_structures(path)) == 1


def test_bad_tags(tmp_path, real_data):
    frames = ase.io.read(real_data / "oc20_is2re_samples" / "is2re_bs3.extxyz", ":2")
    tags = frames[1].get_tags()
    tags[0] = 3
    frames[1].set_tags(tags)
    path = tmp_path / "tags.extxyz"
    ase.io.write(path, frames)
    with pytest.raises(DataError, match=r"tags.extxyz, structure 1: tag 3: OC20 tags are 0 .*tags='ase'"):
        read_structures(path, tags="oc20")
    assert read_structures(path)[1].tags.max() == 2  # auto: a tag above 2 means ASE's layer convention
    tags[0] = -1
    frames[1].set_tags(tags)
    ase.io.write(path, frames)
    with pytest.raises(DataError, match=r"structure 1: negative tag -1"):
        read_structures(path)
