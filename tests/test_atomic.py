"""Atomic output: a temporary file beside the target, renamed into place; inputs never
overwritten; ``--force`` to replace an output; a compress killed mid-write leaves the old
output (or none), never a partial one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rnnshrink.cli import cli
from rnnshrink.errors import OptionError
from rnnshrink.io.atomic import TEMPORARY_MARK, atomic_path, check_output_path

ROOT = Path(__file__).resolve().parent.parent
CHARLM = ROOT / "fixtures" / "charlm.pt"


def test_temporary_file_is_beside_the_output_and_renamed(tmp_path):
    output = tmp_path / "out.bin"
    with atomic_path(output) as temporary:
        assert temporary.parent == tmp_path
        assert temporary.name.startswith(f".out.bin{TEMPORARY_MARK}")
        temporary.write_bytes(b"new")
        assert not output.exists()
    assert output.read_bytes() == b"new"
    assert list(tmp_path.iterdir()) == [output]


def test_failure_keeps_the_old_output_and_removes_the_temporary(tmp_path):
    output = tmp_path / "out.bin"
    output.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(output) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert output.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [output]


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink", "hardlink"])
def test_input_is_never_overwritten_whatever_its_spelling(tmp_path, spelling):
    model = tmp_path / "sub" / "charlm.pt"
    model.parent.mkdir()
    model.write_bytes(CHARLM.read_bytes())
    output = {"same": model, "dotted": tmp_path / "sub" / ".." / "sub" / "charlm.pt",
              "symlink": tmp_path / "link.pt", "hardlink": tmp_path / "hard.pt"}[spelling]
    if spelling == "symlink":
        output.symlink_to(model)
    elif spelling == "hardlink":
        os.link(model, output)
    with pytest.raises(OptionError, match="refusing to overwrite the input file"):
        check_output_path(output, inputs=[model], force=True)
    result = CliRunner().invoke(cli, ["compress", str(model), "-t", "quant:bits=8", "-o",
                                      str(output), "--force"])
    assert result.exit_code == 1 and "refusing to overwrite the input file" in result.output
    assert model.read_bytes() == CHARLM.read_bytes()


def test_existing_output_needs_force(tmp_path):
    output = tmp_path / "out.h5"
    output.write_bytes(b"keep")
    args = ["compress", str(CHARLM), "-t", "quant:bits=8", "-o", str(output)]
    assert "pass --force" in CliRunner().invoke(cli, args).output
    assert output.read_bytes() == b"keep"
    assert CliRunner().invoke(cli, [*args, "--force"]).exit_code == 0
    assert output.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"


def big_safetensors(path, hidden=512, seed=0):
    """A 2-layer LSTM state dict of hidden = input = ``hidden`` (16 MB at 512), safetensors."""
    rng = np.random.default_rng(seed)
    tensors, header, offset = [], {}, 0
    for layer in range(2):
        for role, shape in (("weight_ih", (4 * hidden, hidden)), ("weight_hh", (4 * hidden, hidden)),
                            ("bias_ih", (4 * hidden,)), ("bias_hh", (4 * hidden,))):
            data = (rng.standard_normal(shape, np.float32) / np.sqrt(hidden)).astype(np.float32)
            header[f"{role}_l{layer}"] = {"dtype": "F32", "shape": list(shape),
                                          "data_offsets": [offset, offset + data.nbytes]}
            tensors.append(data.tobytes())
            offset += data.nbytes
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(tensors))
    return path


def kill_mid_write(command, folder, output):
    """Start ``command``; SIGKILL it once a temporary for ``output`` holds bytes.

    Returns the temporary files left, or None when the run finished before it was caught.
    """
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    prefix = f".{output.name}{TEMPORARY_MARK}"
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None and time.monotonic() < deadline:
            partial = [e for e in os.scandir(folder) if e.name.startswith(prefix)
                       and e.stat().st_size > 0]
            if partial:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return [Path(e.path) for e in partial]
            time.sleep(0.0005)
        return None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("output_format,suffix", [("rnnshrink", ".h5"), ("same", ".safetensors")])
def test_sigkill_mid_write_leaves_the_old_output(tmp_path, output_format, suffix):
    model = big_safetensors(tmp_path / "big.safetensors")
    output = tmp_path / f"out{suffix}"
    old = b"the previous output"
    command = [sys.executable, "-m", "rnnshrink", "compress", str(model), "-t", "quant:bits=8",
               "--format", output_format, "-o", str(output), "--force"]
    for _ in range(3):  # the write takes a moment; catch it in the act
        output.write_bytes(old)
        left = kill_mid_write(command, tmp_path, output)
        if left is not None:
            break
    else:
        pytest.fail("every run finished before it could be killed mid-write")
    assert output.read_bytes() == old
    assert all(path.exists() and path.name.startswith(f".out{suffix}{TEMPORARY_MARK}")
               for path in left)
    for path in left:
        path.unlink()
    output.unlink()
    if kill_mid_write(command, tmp_path, output) is not None:  # no old output: none after
        assert not output.exists()


@pytest.mark.parametrize("command", [["compress", "-t", "quant:bits=8", "--format", "same"],
                                     ["convert", "--to", "onnx"]])
def test_external_data_of_the_input_is_never_overwritten(tmp_path, command):
    for name in ("onnx_external.onnx", "onnx_external.data"):
        (tmp_path / name).write_bytes((ROOT / "fixtures" / name).read_bytes())
    data = tmp_path / "onnx_external.data"
    result = CliRunner().invoke(cli, [command[0], str(tmp_path / "onnx_external.onnx"),
                                      *command[1:], "-o", str(data), "--force"])
    assert result.exit_code == 1 and "refusing to overwrite the input file" in result.output
    assert data.read_bytes() == (ROOT / "fixtures" / "onnx_external.data").read_bytes()
