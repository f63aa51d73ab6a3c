"""simulate: the compute-in-memory simulation against the float reference, sweeps, the command."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import rnnshrink
from rnnshrink import simulate as simulation
from rnnshrink.cim import Settings
from rnnshrink.cli import cli
from rnnshrink.fidelity import probe_inputs
from rnnshrink.model.network import run_model

from _models import hide_matplotlib, stack_model

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CHARLM = FIXTURES / "charlm.pt"


@pytest.fixture(scope="module")
def charlm():
    return rnnshrink.read(CHARLM)


@pytest.fixture(scope="module")
def text(charlm):
    """Real held-out text through the embedding: 4 sequences of 60 characters."""
    tokens = np.load(FIXTURES / "charlm_data.npz")["valid_tokens"][:240].reshape(4, 60)
    return charlm.tensors["embed.weight"].data.astype(np.float64)[tokens]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("build", [
    lambda: stack_model(sizes=(6, 12, 10)),
    lambda: stack_model(sizes=(6, 12, 10), directions=(2, 2), known=False, proj=4),
])
def test_all_off_is_the_float_reference_exactly(build):
    model = build()
    x = probe_inputs(model, batch=3, steps=9)[0]
    traces, peaks = simulation.reference(model, x)
    expected = run_model(model, x)
    simulated = simulation.run(model, x, Settings(input_bits=0), peaks, traces)
    for name, arrays in expected.items():
        for got, want, recorded in zip(simulated[name], arrays, traces[name][1:]):
            assert np.array_equal(got, want) and np.array_equal(recorded, want)
    result = simulation.simulate(model, x, Settings(), draws=3)
    assert result["draws"] == 1  # deterministic without noise
    assert all(result[m] == 0.0 and result[m + "_std"] == 0.0 for m in simulation.METRICS)


def test_quantized_state_lies_on_its_grid(charlm, text):
    traces, peaks = simulation.reference(charlm, text)
    simulated = simulation.run(charlm, text, Settings(state_bits=3), peaks, traces)
    for k, name in enumerate(["lstm_l0", "lstm_l1"]):
        _, h, c = simulated[name]
        for value, point in ((c, "c"), (h, "m")):
            steps = value / (peaks[(name, 0)][point] / 4)     # Q(·; 3, a): multiples of a/4
            np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)
            assert np.abs(steps).max() <= 3 + 1e-9


@pytest.mark.parametrize("field, bits", [
    ("input_bits", [2, 4, 6, 8]),
    ("adc_bits", [3, 4, 6, 8]),
    ("weight_bits", [2, 4, 6, 8]),
    # below 6 bits the cell state's step (its range is ~38 on this model) exceeds twice any
    # i * g, c stays 0 and the output is 0 (error 1.0 at every width)
    ("state_bits", [6, 8, 10, 12]),
])
def test_error_grows_as_bits_drop(charlm, text, field, bits):
    rows = simulation.sweep(charlm, text, Settings(), field, bits)
    errors = [row["output_rel_error"] for row in rows]
    assert errors[0] > errors[1] > errors[2] > errors[3] > 0
    assert errors[0] > 3 * errors[3]


def test_noise_draws_seeded_and_independent_of_batching(charlm, text, monkeypatch):
    settings = Settings(noise=0.02, input_bits=6)
    result = simulation.simulate(charlm, text, settings, draws=3, seed=7)
    assert result["draws"] == 3 and result["output_rel_error"] > 0
    assert result["output_rel_error_std"] > 0 and result["layers"]["lstm_l0"]["c_rel_error_std"] > 0
    assert simulation.simulate(charlm, text, settings, draws=3, seed=7) == result
    assert simulation.simulate(charlm, text, settings, draws=3, seed=8) != result
    monkeypatch.setattr(simulation, "NOISE_BYTES", 1)  # one sequence at a time
    alone = simulation.simulate(charlm, text, settings, draws=3, seed=7)
    for name in ("lstm_l0", "lstm_l1"):  # equal up to the products' rounding
        assert alone["layers"][name] == pytest.approx(result["layers"][name], rel=1e-9)


def test_noise_is_redrawn_per_sequence(charlm, text):
    twins = np.concatenate([text[:1], text[:1]])
    traces, peaks = simulation.reference(charlm, twins)
    y = simulation.run(charlm, twins, Settings(noise=0.02), peaks, traces)["lstm_l1"][0]
    assert not np.allclose(y[0], y[1])
    y = simulation.run(charlm, twins, Settings(input_bits=4), peaks, traces)["lstm_l1"][0]
    np.testing.assert_array_equal(y[0], y[1])


def test_clamp_map_is_the_codes_rule(charlm, text):
    wide = simulation.simulate(charlm, text, Settings(weight_map="clamp", max_w=100.0))
    assert wide["output_rel_error"] == 0.0   # nothing clamped: the float weights
    tight = simulation.simulate(charlm, text, Settings(weight_map="clamp", max_w=0.2))
    assert tight["output_rel_error"] > 0.1   # a float-trained model does not fit in ±0.2


def test_parse_sweep():
    assert simulation.parse_sweep("input-bits=2..5", Settings()) == ("input_bits", [2, 3, 4, 5])
    assert simulation.parse_sweep("noise=0,0.05", Settings()) == ("noise", [0.0, 0.05])
    assert simulation.parse_sweep("adc-clip=8,16", Settings(adc_bits=6))[1] == [8.0, 16.0]
    with pytest.raises(rnnshrink.OptionError, match="--adc-clip needs --adc-bits"):
        simulation.parse_sweep("adc-clip=8,16", Settings())


def test_cli_table(tmp_path):
    result = run("simulate", CHARLM, "--input-bits", 4, "--adc-bits", 6, "--noise", 0.02,
                 "--draws", 2)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "DAC 4 bits, ADC 6 bits (calibrated clip), state ideal, weights float (scale), noise 0.02"
    assert "rnnshrink's probes: give --calib for real inputs" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["layer", "lstm_l0", "lstm_l1", "model"]
    assert " ± " in lines[3]
    assert list(tmp_path.iterdir()) == []


def test_cli_json_with_calib(tmp_path, text):
    calib = tmp_path / "text.npy"
    np.save(calib, text)
    result = run("simulate", CHARLM, "--calib", calib, "--state-bits", 8, "--json")
    assert result.exit_code == 0, result.output
    done = json.loads(result.output)
    assert done["calibrated"] and done["probe"].startswith("4 sequences of length 60")
    assert done["settings"]["state_bits"] == 8 and done["result"]["draws"] == 1
    assert set(done["result"]["layers"]) == {"lstm_l0", "lstm_l1"}


def test_cli_sweep_csv(tmp_path):
    output = tmp_path / "dac.csv"
    result = run("simulate", CHARLM, "--sweep", "input-bits=2..4", "-o", output)
    assert result.exit_code == 0, result.output
    with open(output, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(simulation.COLUMNS)
    assert [row[:2] for row in rows[1:]] == [["input-bits", "2"], ["input-bits", "3"], ["input-bits", "4"]]
    errors = [float(row[2]) for row in rows[1:]]
    assert errors[0] > errors[2] > 0
    assert "input-bits=2 " in result.output and f"wrote {output}" in result.output


@pytest.mark.parametrize("args, message", [
    (["--sweep", "input-bits=1..3"], "--input-bits must be 0 (off) or an integer in [2, 16], got 1"),
    (["--sweep", "dac=2..8"], "--sweep must be SETTING=FIRST..LAST or SETTING=V1,V2,... with "
     "SETTING one of input-bits, adc-bits, state-bits, weight-bits, noise, adc-clip, max-w, got 'dac=2..8'"),
    (["--sweep", "input-bits=2..4", "--draws", 0], "--draws must be an integer in [1, 10000], got 0"),
    (["--sweep", "input-bits=2..4", "--adc-bits", 20],
     "--adc-bits must be 0 (off) or an integer in [2, 16], got 20"),
])
def test_cli_bad_values(tmp_path, args, message):
    result = run("simulate", CHARLM, *args, "-o", tmp_path / "s.csv")
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {message}"
    assert list(tmp_path.iterdir()) == []


def test_cli_output_needs_sweep(tmp_path):
    result = run("simulate", CHARLM, "-o", tmp_path / "s.csv")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: -o/--plot write a sweep table: give --sweep SETTING=RANGE"


def test_cli_plot_without_matplotlib(tmp_path, monkeypatch):
    hide_matplotlib(monkeypatch)
    result = run("simulate", CHARLM, "--sweep", "noise=0,0.01", "-o", tmp_path / "s.csv",
                 "--plot", tmp_path / "s.png")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: --plot needs matplotlib: pip install rnnshrink[plot]"
    assert list(tmp_path.iterdir()) == []


def test_cli_plot_png(tmp_path):
    pytest.importorskip("matplotlib")
    result = run("simulate", CHARLM, "--sweep", "noise=0,0.01", "--draws", 2,
                 "--plot", tmp_path / "s.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
