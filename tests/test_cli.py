"""The command line: exit codes, the exact Error: lines, outputs written or not."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rnnshrink import __version__
from rnnshrink.cli import cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CHARLM = FIXTURES / "charlm.pt"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result):
    """The single ``Error:`` line of a failed command (and proof there is no traceback)."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_every_command_and_option_has_help():
    for name, command in cli.commands.items():
        assert command.help, f"{name} has no help"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts} has no help"


def test_version_and_module_entry_point():
    assert run("--version").output.strip() == f"rnnshrink, version {__version__}"
    result = subprocess.run([sys.executable, "-m", "rnnshrink", "--version"],
                            capture_output=True, text=True, check=True)
    assert __version__ in result.stdout


def test_report_table_and_json():
    table = run("report", CHARLM)
    assert table.exit_code == 0, table.output
    assert "lstm" in table.output and "LSTM total" in table.output
    data = json.loads(run("report", CHARLM, "--json").output)
    for key in ("format", "lstm_layers", "lstm_params", "lstm_bytes", "other_params", "other_bytes"):
        assert key in data
    layer = data["lstm_layers"][0]
    for key in ("name", "input_size", "hidden_size", "proj_size", "directions", "params", "bytes",
                "macs_per_step"):
        assert key in layer
    assert [(l["input_size"], l["hidden_size"]) for l in data["lstm_layers"]] == [(16, 128), (128, 128)]
    # nn.LSTM(16, 128, num_layers=2): 4*128*(16+128+2) + 4*128*(128+128+2), float32
    assert data["lstm_params"] == 4 * 128 * (16 + 128 + 2) + 4 * 128 * (128 + 128 + 2)
    assert data["lstm_bytes"] == 4 * data["lstm_params"]
    assert layer["macs_per_step"] == 4 * 128 * (16 + 128)


@pytest.mark.parametrize("content,problem", [
    (None, "no such file"),
    (b"", "empty file"),
    (b"hello, I am a text file\n", "not a checkpoint rnnshrink reads"),
])
def test_report_bad_files(tmp_path, content, problem):
    path = tmp_path / "model.bin"
    if content is not None:
        path.write_bytes(content)
    line = error_line(run("report", path))
    assert line == f"Error: {path}: {problem}" or line.startswith(f"Error: {path}: {problem}")


def test_report_truncated_checkpoint(tmp_path):
    path = tmp_path / "cut.pt"
    path.write_bytes(CHARLM.read_bytes()[:5000])
    assert str(path) in error_line(run("report", path))


def test_compress_writes_container_and_summary(tmp_path):
    output = tmp_path / "small.h5"
    result = run("compress", CHARLM, "--tau", "0.7", "-t", "quant:bits=8", "-o", output, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    for key in ("lstm_bytes_before", "lstm_bytes_after", "bytes_before", "bytes_after",
                "macs_before", "macs_after", "output_rel_error"):
        assert key in summary
    assert summary["lstm_bytes_after"] < summary["lstm_bytes_before"] / 4
    assert 0 < summary["output_rel_error"] < 0.5
    report = json.loads(run("report", output, "--json").output)
    assert report["format"] == "rnnshrink"
    assert report["lstm_bytes"] == summary["lstm_bytes_after"]
    again = json.loads(run("report", output, "--compare", CHARLM, "--json").output)
    assert again["compare"]["output_rel_error"] == pytest.approx(summary["output_rel_error"])


def test_compress_refuses_to_overwrite(tmp_path):
    model = tmp_path / "charlm.pt"
    shutil.copy(CHARLM, model)
    before = model.read_bytes()
    line = error_line(run("compress", model, "--tau", "0.5", "-o", model, "--force"))
    assert "refusing to overwrite the input file" in line
    assert model.read_bytes() == before
    existing = tmp_path / "out.h5"
    existing.write_bytes(b"keep me")
    assert "already exists (pass --force to replace it)" in error_line(
        run("compress", model, "--tau", "0.5", "-o", existing))
    assert existing.read_bytes() == b"keep me"


def test_bad_transform_is_reported_before_any_work(tmp_path):
    missing = tmp_path / "missing.pt"
    line = error_line(run("compress", missing, "-t", "svd:tau=2"))
    assert line == "Error: svd: tau must be in [0.0, 1.0], got 2.0"
    line = error_line(run("compress", missing, "-t", "squash"))
    assert "unknown transform 'squash'; valid: svd, lowrank, iss, prune, quant, slim" in line
    assert "no transform given" in error_line(run("compress", missing))


def test_failed_compress_leaves_no_output(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(CHARLM.read_bytes()[:-100])
    output = tmp_path / "out.h5"
    error_line(run("compress", bad, "--tau", "0.5", "-o", output))
    assert list(tmp_path.iterdir()) == [bad]


@pytest.mark.parametrize("target,suffix", [("onnx", ".onnx"), ("torch", ".pt"), ("keras", ".h5")])
def test_convert_compressed_file(tmp_path, target, suffix):
    small = tmp_path / "small.h5"
    assert run("compress", FIXTURES / "keras2_charlm.h5", "-t", "iss:keep=0.75",
               "-t", "quant:bits=8", "-o", small).exit_code == 0
    output = tmp_path / f"out{suffix}"
    result = run("convert", small, "--to", target, "-o", output, "--json")
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)
    assert written["output"] == str(output) and output.exists()
    assert written["bytes"] == output.stat().st_size


def test_convert_refusals_leave_no_file(tmp_path):
    small = tmp_path / "small.h5"
    assert run("compress", FIXTURES / "keras2_charlm.h5", "-t", "svd:rank=16", "-o", small).exit_code == 0
    output = tmp_path / "out.h5"
    line = error_line(run("convert", small, "--to", "keras", "-o", output))
    assert "projection" in line
    assert not output.exists()
    line = error_line(run("convert", small, "--to", "onnx", "--onnx-style", "folded", "-o", output))
    assert "projection" in line and not output.exists()
    assert "refusing to overwrite the input file" in error_line(
        run("convert", small, "--to", "onnx", "-o", small, "--force"))
