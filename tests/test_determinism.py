"""The same command on the same input writes byte-identical files.

Two separate processes (different ``PYTHONHASHSEED``, more than a second apart so that any
timestamp would differ) run the same ``compress`` and ``convert`` commands into two folders;
every file written must be the same bytes.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
RECIPE = ["--tau", "0.5", "-t", "quant:bits=4,group=32"]
COMMANDS = {  # output name -> command line (OUT stands for the output folder)
    "charlm.rnnshrink.h5": ["compress", "charlm.pt", *RECIPE],
    "keras.rnnshrink.h5": ["compress", "keras2_charlm.h5", "-t", "iss:keep=0.75",
                           "-t", "prune:sparsity=0.5"],
    "same.pt": ["compress", "charlm.pt", "--format", "same", *RECIPE],
    "same_legacy.pt": ["compress", "charlm_legacy.pt", "--format", "same", "-t", "quant:bits=8"],
    "same.safetensors": ["compress", "charlm.safetensors", "--format", "same", *RECIPE],
    "same.onnx": ["compress", "charlm.onnx", "--format", "same", "-t", "quant:bits=8"],
    "same.h5": ["compress", "keras2_charlm.h5", "--format", "same", "-t", "quant:bits=8"],
    "same.keras": ["compress", "keras3_charlm.keras", "--format", "same", "-t", "quant:bits=8"],
    "converted.onnx": ["convert", "OUT/charlm.rnnshrink.h5", "--to", "onnx"],
    "converted.pt": ["convert", "OUT/keras.rnnshrink.h5", "--to", "torch"],
    "converted.h5": ["convert", "OUT/keras.rnnshrink.h5", "--to", "keras"],
}
SCRIPT = """
import sys
from rnnshrink.cli import cli
out = sys.argv[1]
for output, *args in (line.split("\\t") for line in sys.argv[2:]):
    args = [a.replace("OUT", out) for a in args]
    cli.main(args=[*args, "-o", f"{out}/{output}"], standalone_mode=False)
"""


def run_all(folder, hash_seed):
    folder.mkdir()
    lines = ["\t".join([name, *command]) for name, command in COMMANDS.items()]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": str(hash_seed)}
    subprocess.run([sys.executable, "-c", SCRIPT, str(folder), *lines], cwd=FIXTURES, env=env,
                   check=True, capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    run_all(root / "a", 1)
    time.sleep(1.5)
    run_all(root / "b", 2)
    return root / "a", root / "b"


@pytest.mark.parametrize("name", COMMANDS)
def test_same_command_same_bytes(twice, name):
    first, second = (folder / name for folder in twice)
    assert first.stat().st_size > 0
    assert first.read_bytes() == second.read_bytes()


def test_nothing_else_was_written(twice):
    for folder in twice:
        assert sorted(p.name for p in folder.iterdir()) == sorted(COMMANDS)
