"""sweep: a CSV of size against error for a grid of recipes, the Pareto front marked, a plot."""

import csv
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import rnnshrink
from rnnshrink import sweep
from rnnshrink.cli import cli
from rnnshrink.fidelity import probe_inputs

from _models import hide_matplotlib

CHARLM = Path(__file__).resolve().parent.parent / "fixtures" / "charlm.pt"
SMALL_GRID = [["quant:bits=8"], ["quant:bits=4,group=64"], ["prune:sparsity=0.5"],
              ["prune:sparsity=0.5", "quant:bits=8"], ["svd:tau=0.9"]]


@pytest.fixture
def small_grid(monkeypatch):
    """The command on a few cheap recipes (no SVD: keep the command tests fast)."""
    monkeypatch.setattr(sweep, "GRID", SMALL_GRID[:4])


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_rows_and_pareto_front():
    model = rnnshrink.read(CHARLM)
    rows, skipped = sweep.sweep(model, probe_inputs(model, batch=4, steps=20)[0], SMALL_GRID)
    assert not skipped and [row["recipe"] for row in rows] == [" ".join(r) for r in SMALL_GRID]
    assert rows[3]["method"] == "prune+quant"
    for row in rows:  # on the front exactly when no recipe as small has a smaller error
        beaten = any(o["lstm_ratio"] >= row["lstm_ratio"]
                     and o["output_rel_error"] < row["output_rel_error"] for o in rows)
        assert row["pareto"] == (not beaten)
    assert rows[0]["pareto"]  # 8-bit: the smallest error of all
    assert rows[4]["macs_ratio"] > 1 and rows[0]["macs_ratio"] == 1


def test_mark_pareto():
    rows = [{"lstm_ratio": r, "output_rel_error": e} for r, e in [(2, 0.1), (4, 0.05), (3, 0.2), (8, 0.3)]]
    sweep.mark_pareto(rows)
    assert [row["pareto"] for row in rows] == [False, True, False, True]


def test_cli_writes_csv(tmp_path, small_grid):
    output = tmp_path / "sweep.csv"
    result = run("sweep", CHARLM, "-o", output)
    assert result.exit_code == 0, result.output
    with open(output, newline="") as f:
        assert next(csv.reader(f)) == list(sweep.COLUMNS)
    rows = read_rows(output)
    assert len(rows) == 4 and any(row["pareto"] == "1" for row in rows)
    assert "Pareto front:" in result.output and f"wrote {output}" in result.output
    again = run("sweep", CHARLM, "-o", output)
    assert again.output.strip() == f"Error: {output}: already exists (pass --force to replace it)"


def test_cli_refuses_to_overwrite_the_input(tmp_path, small_grid):
    model = tmp_path / "charlm.pt"
    shutil.copy(CHARLM, model)
    result = run("sweep", model, "-o", model, "--force")
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {model}: refusing to overwrite the input file"
    assert model.read_bytes() == CHARLM.read_bytes()


def test_plot_without_matplotlib(tmp_path, small_grid, monkeypatch):
    hide_matplotlib(monkeypatch)
    result = run("sweep", CHARLM, "-o", tmp_path / "s.csv", "--plot", tmp_path / "s.png")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: --plot needs matplotlib: pip install rnnshrink[plot]"
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_plot_png(tmp_path, small_grid):
    pytest.importorskip("matplotlib")
    result = run("sweep", CHARLM, "-o", tmp_path / "s.csv", "--plot", tmp_path / "s.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
