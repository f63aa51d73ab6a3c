"""The hostile corpus (``tests/hostile/``) through the library and the command line.

For every entry: :func:`rnnshrink.read` raises InputError naming the file and the problem,
without allocating what the file claims, and opens nothing outside the model's folder;
``report`` and ``compress`` exit 1 with that one ``Error:`` line; no canary appears (nothing in
the file ran) and no file anywhere in the test's folder is created or changed. NaN / Inf
weights are refused the same way and read with ``allow_nonfinite``. One real subprocess per
category checks the same from outside.
"""

import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

import hostile
from rnnshrink import read
from rnnshrink.cli import cli
from rnnshrink.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
ENTRIES = hostile.entries()
PEAK_BYTES = 32 << 20  # Python-level allocations while refusing; files claim far more
_opened = None  # paths the interpreter opens while a read is watched


def _audit(event, args):
    if _opened is not None and event in ("open", "mmap.__new__") and args and \
            isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(Path(os.fsdecode(args[0])).resolve())


sys.addaudithook(_audit)


def build(tmp_path, entry):
    folder = tmp_path / "model"
    folder.mkdir()
    entry.build(folder)
    return folder / entry.file


def snapshot(root):
    """Every path under ``root`` with its size and modification time."""
    return {p: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def assert_untouched(tmp_path, before):
    assert not (tmp_path / "canary").exists(), "code from the file ran"
    assert snapshot(tmp_path) == before


def expect_line(line, path, entry):
    prefix = f"Error: {path}: "
    assert line.startswith(prefix), line
    assert re.search(entry.problem, line[len(prefix):]), line


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_library_refuses_without_running_reading_outside_or_allocating(tmp_path, entry):
    global _opened
    path = build(tmp_path, entry)
    before = snapshot(tmp_path)
    _opened = []
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as error:
            read(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        opened, _opened = _opened, None
    assert error.value.path == str(path)
    assert re.search(entry.problem, error.value.problem), error.value.problem
    assert "\n" not in str(error.value)
    assert peak < PEAK_BYTES
    outside = [p for p in opened if p.is_relative_to(tmp_path.resolve())
               and not p.is_relative_to(path.parent.resolve())]
    assert not outside, f"opened outside the model's folder: {outside}"
    assert_untouched(tmp_path, before)
    if entry.nonfinite:
        assert read(path, allow_nonfinite=True).lstm_layers


@pytest.mark.parametrize("command", ["report", "compress"])
@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_cli_gives_one_error_line_and_writes_nothing(tmp_path, monkeypatch, entry, command):
    path = build(tmp_path, entry)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    options = ["-t", "quant:bits=8", "--format", "same"] if command == "compress" else []
    result = CliRunner().invoke(cli, [command, str(path), *options])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    expect_line(lines[0], path, entry)
    assert_untouched(tmp_path, before)
    if entry.nonfinite and command == "report":
        allowed = CliRunner().invoke(cli, [command, str(path), "--allow-nonfinite"])
        assert allowed.exit_code == 0, allowed.output


CATEGORIES = {}
for _entry in ENTRIES:
    CATEGORIES.setdefault(_entry.category, _entry)


@pytest.mark.parametrize("entry", CATEGORIES.values(), ids=lambda e: e.category)
def test_real_process_per_category(tmp_path, entry):
    path = build(tmp_path, entry)
    before = snapshot(tmp_path)
    result = subprocess.run([sys.executable, "-m", "rnnshrink", "compress", str(path), "-t",
                             "quant:bits=8"], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)},
                            timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    expect_line(lines[0], path, entry)
    assert_untouched(tmp_path, before)


def test_corpus_covers_every_category_the_issue_names():
    counts = {}
    for entry in ENTRIES:
        counts[entry.category] = counts.get(entry.category, 0) + 1
    assert set(counts) >= {"pickle-code", "pickle-globals", "pickle-nested",
                           "pickle-persistent-id", "pickle-lengths", "torch-storage", "zip",
                           "safetensors", "onnx", "hdf5-keras", "hdf5-container", "nonfinite",
                           "truncated"}
    names = {entry.name for entry in ENTRIES}
    assert {"os.system-zip", "builtins.eval-zip", "subprocess.Popen-zip", "traversal",
            "duplicate-record", "keras-bomb-real", "external-absolute", "external-parent",
            "overlap", "shape-huge", "missing-kernel", "kernel-int", "keras-kernel-nan"} <= names
