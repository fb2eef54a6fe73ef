"""docs/extending.md, run as written: its code blocks become the files of a plugin folder, its
commands run there (the CLI in this process), and the plugin is forgotten before the checkpoint is
loaded, as in a later process, so the checkpoint must import it itself."""

import importlib
import json
import re
import runpy
import shlex
import sys
from pathlib import Path

from frameavg.cli.main import main

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "extending.md"
BLOCK = re.compile(r"<!-- extending-guide: (?:file (\S+)|run) -->\n```\w*\n(.*?)```", re.S)


def guide() -> tuple[dict[str, str], list[str]]:
    """({file name: text} of the guide's file blocks, in order and concatenated; the lines of its
    run blocks)."""
    files, commands = {}, []
    for match in BLOCK.finditer(GUIDE.read_text()):
        name, text = match[1], match[2]
        if name:
            files[name] = f"{files[name]}\n\n{text}" if name in files else text
        else:
            commands += [line for line in text.splitlines() if shlex.split(line, comments=True)]
    return files, commands


def run(line: str, folder: Path, monkeypatch, capsys) -> str:
    """One command of the guide, in ``folder``; its stdout."""
    argv = shlex.split(line, comments=True)
    if argv[0] == "export":
        name, value = argv[1].split("=", 1)
        value = value.replace("$PWD", str(folder))
        monkeypatch.setenv(name, value)
        if name == "PYTHONPATH":
            monkeypatch.syspath_prepend(value)
        return ""
    if argv[:3] == ["python", "-m", "pytest"]:
        module = importlib.import_module(Path(argv[-1]).stem)
        tests = [test for name, test in vars(module).items() if name.startswith("test_") and callable(test)]
        assert tests
        for test in tests:
            test()
        return ""
    if argv[0] == "python":
        runpy.run_path(argv[1], run_name="__main__")
        return ""
    if argv[0] == "frameavg":
        code = main(argv[1:])
        captured = capsys.readouterr()
        assert code == 0, f"{line}\n{captured.err}"
        return captured.out
    raise AssertionError(f"the guide runs a command this test does not know: {line}")


def test_extending_guide_runs_as_written(tmp_path, monkeypatch, capsys, forget_plugins):
    from frameavg.training.run import read_checkpoint

    files, commands = guide()
    assert set(files) == {"toy_plugin.py", "test_toy_plugin.py", "make_data.py", "toy.yaml"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    outputs = []
    for line in commands:
        if line.startswith("frameavg symmetry --checkpoint"):
            forget_plugins()  # a later process: only the checkpoint knows its plugin
        outputs.append((line, run(line, tmp_path, monkeypatch, capsys)))

    def output(prefix: str) -> str:
        return next(out for line, out in outputs if line.startswith(prefix))

    assert len((tmp_path / "ethanol.jsonl").read_text().splitlines()) == 40
    assert "40" in output("frameavg data info")  # data info counts the 40 structures

    bare = {row.split()[0]: row.split() for row in output("frameavg symmetry --plugins").splitlines()[2:] if row.strip()}
    assert bare["rotation"][1] == "no" and float(bare["rotation"][4]) > 1e-4  # raw x, y, z: not invariant
    assert bare["translation"][1] == "yes"  # its claim (invariances), measured to hold

    checkpoint = tmp_path / "runs" / "toy" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(checkpoint)["hyper_parameters"]["config"]["plugins"] == ["toy_plugin"]
    assert "toy_plugin" in sys.modules  # imported again, by loading the checkpoint
    report = json.loads(output("frameavg symmetry --checkpoint"))
    assert (report["meta"]["dims"], report["meta"]["method"]) == ("3D", "all")
    checks = {row["check"]: row for row in report["checks"]}
    assert {"rotation", "reflection", "translation", "permutation"} <= set(checks)
    for row in checks.values():
        assert row["expected"] and row["holds"], row
        assert row["energy_rel_max"] < 1e-9 and row["forces_abs_max"] < 1e-8, row
