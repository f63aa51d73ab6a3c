"""EntropyCoded weights: the step map, the real stored size, fixed-width re-packing, composition
with low rank, the forward pass and the report."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from _models import charlm
import rnnshrink
from rnnshrink import coding
from rnnshrink.cli import cli
from rnnshrink.dropin import write_same
from rnnshrink.io import container
from rnnshrink.io.keras_export import export_keras
from rnnshrink.io.torch_export import export_torch
from rnnshrink.errors import OptionError
from rnnshrink.fidelity import probe_inputs
from rnnshrink.model import EntropyCoded, coded, run_stack, step_map
from rnnshrink.model.weights import LowRank, Quantized, index_encoding
from rnnshrink.report import format_table, summarize
from rnnshrink.transforms.quant import quantize_weight

RNG = np.random.default_rng(5)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def coded_matrix(W, step_in_rms=0.5, col_exp=None, mask=None, delta=0.75):
    """``W`` on the step map ``delta 2^(k_i/8) 2^(l_j/8)`` with ``k_i`` from the row RMS."""
    rms = np.sqrt((W ** 2).mean(axis=1)) + 1e-12
    row_exp = np.clip(np.round(8 * np.log2(step_in_rms * rms / delta)), -128, 127).astype(int)
    col_exp = np.zeros(W.shape[1], int) if col_exp is None else col_exp
    codes = np.round(W / step_map(delta, row_exp, col_exp)).astype(np.int64)
    if mask is not None:
        codes = np.where(mask, codes, 0)
    return EntropyCoded(codes, delta, row_exp, col_exp, mask)


def charlm_with(make, model=None):
    """The char LM (or ``model``) with every LSTM matrix replaced by ``make(W)``."""
    model = charlm() if model is None else model
    for layer in model.lstm_layers:
        directions = [dataclasses.replace(d, **{role: make(w.materialize())
                                                for role, w in d.matrices.items()})
                      for d in layer.directions]
        model = model.replace_layer(layer.name, dataclasses.replace(layer, directions=directions))
    return model


def test_step_map_is_delta_times_row_and_column_octave_eighths():
    S = step_map(0.5, np.array([0, 8, -16]), np.array([4, 0]))
    np.testing.assert_allclose(S, 0.5 * np.outer([1, 2, 0.25], [2 ** 0.5, 1]), rtol=1e-15)


def test_materialize_is_codes_times_the_step_map_and_bytes_are_real():
    W = RNG.normal(0, 0.2, (48, 20))
    weight = coded_matrix(W, col_exp=RNG.integers(-4, 5, 20))
    S = step_map(np.float16(0.75), weight.row_exp, weight.col_exp)
    np.testing.assert_array_equal(weight.materialize(), weight.codes * S)
    assert np.abs(weight.materialize() - W).max() <= 0.5 * S.max() + 1e-12
    assert weight.nbytes == weight.coded.nbytes + 2 + len(weight.exponents)
    assert weight.exponents == coding.pack_bytes(
        np.concatenate([weight.row_exp, weight.col_exp]).astype(np.int8).tobytes())
    assert weight.params == weight.macs == W.size
    assert weight.bits_per_weight == pytest.approx(8 * weight.nbytes / W.size)
    described = weight.describe()
    assert described["kind"] == "coded" and described["bits_per_weight"] == pytest.approx(
        weight.bits_per_weight, abs=1e-3)


@pytest.mark.parametrize("spread, dtype", [(0.3, np.int8), (300, np.int16), (1e6, np.int32)])
def test_codes_kept_narrow_and_operator_built_by_runs_of_rows(monkeypatch, spread, dtype):
    monkeypatch.setattr(coded, "RUN_ENTRIES", 100)  # several runs of rows
    codes = np.round(RNG.normal(0, spread, (37, 11))).astype(np.int64)
    weight = EntropyCoded(codes, 0.5, RNG.integers(-8, 9, 37), RNG.integers(-8, 9, 11))
    assert weight.codes.dtype == dtype
    np.testing.assert_array_equal(weight.codes, codes)
    S = step_map(np.float16(0.5), weight.row_exp, weight.col_exp)
    np.testing.assert_array_equal(weight.materialize(np.float32), (codes * S).astype(np.float32))
    x = RNG.normal(0, 1, (3, 11))
    np.testing.assert_allclose(weight.operator()(x), x @ (codes * S).T, rtol=1e-12)


def test_pruned_matrix_codes_and_counts_only_kept_entries():
    W = RNG.normal(0, 0.2, (40, 30))
    mask = np.abs(W) > 0.15
    weight = coded_matrix(W, mask=mask)
    assert weight.params == weight.macs == np.count_nonzero(mask)
    assert weight.nbytes == weight.coded.nbytes + 2 + len(weight.exponents) \
        + index_encoding(mask)[1]
    assert np.all(weight.materialize()[~mask] == 0)
    assert weight.describe()["sparsity"] == pytest.approx(1 - mask.mean(), abs=1e-6)


def test_rebuilt_from_its_stored_form_is_the_same_weight():
    weight = coded_matrix(RNG.normal(0, 1, (30, 12)), col_exp=RNG.integers(-3, 3, 12))
    again = EntropyCoded.from_coded(weight.coded, weight.delta, weight.row_exp, weight.col_exp)
    np.testing.assert_array_equal(again.materialize(), weight.materialize())
    assert again.nbytes == weight.nbytes


@pytest.mark.parametrize("arguments, message", [
    ({"delta": 0.0}, "delta must be positive"),
    ({"delta": -1.0}, "delta must be positive"),
    ({"delta": 1e6}, "delta must be positive and finite in float16"),
    ({"row_exp": np.full(4, 200)}, r"row_exp must be 4 integers in \[-128, 127\]"),
    ({"row_exp": np.zeros(3)}, "row_exp must be 4 integers"),
    ({"col_exp": np.full(5, 0.5)}, "col_exp must be 5 integers"),
    ({"codes": np.ones((4, 5)) / 2}, "2-D integer array"),
])
def test_bad_arguments_are_refused(arguments, message):
    given = {"codes": np.ones((4, 5), int), "delta": 1.0, "row_exp": np.zeros(4, int),
             "col_exp": np.zeros(5, int), **arguments}
    with pytest.raises(ValueError, match=message):
        EntropyCoded(**given)


# ---- fixed width --------------------------------------------------------------------------

@pytest.mark.parametrize("step_in_rms, bits", [(0.4, 8), (1.0, 4)])
def test_per_row_step_maps_repack_their_own_codes(step_in_rms, bits):
    W = RNG.normal(0, 0.3, (32, 24))
    mask = RNG.random(W.shape) < 0.6
    weight = coded_matrix(W, step_in_rms, col_exp=np.full(24, -3), mask=mask)
    quantized, exact = weight.fixed_width()
    assert exact and quantized.bits == bits and quantized.step_dtype == "float32"
    np.testing.assert_array_equal(quantized.codes, weight.codes)
    np.testing.assert_array_equal(quantized.mask, mask)
    np.testing.assert_allclose(quantized.materialize(), weight.materialize(), rtol=1e-7)


def test_column_step_maps_are_requantized_at_int8_per_row():
    W = RNG.normal(0, 0.3, (32, 24))
    weight = coded_matrix(W, 0.5, col_exp=RNG.integers(-8, 9, 24))
    quantized, exact = weight.fixed_width()
    assert not exact and quantized.bits == 8
    values = weight.materialize()
    half_step = np.abs(values).max(axis=1, keepdims=True) / 254  # + float32 rounding of steps
    assert np.all(np.abs(quantized.materialize() - values) <= half_step * (1 + 1e-4))


def test_codes_too_wide_for_int8_are_requantized():
    codes = np.array([[300, -2], [1, 0]])
    quantized, exact = EntropyCoded(codes, 0.01, [0, 0], [0, 0]).fixed_width()
    assert not exact and np.abs(quantized.codes).max() == 127


# ---- composition --------------------------------------------------------------------------

def test_low_rank_factors_can_be_entropy_coded():
    W = RNG.normal(0, 1, (40, 6)) @ RNG.normal(0, 1, (6, 30)) / 6
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    weight = LowRank(coded_matrix(U[:, :6] * s[:6], 0.1), coded_matrix(Vt[:6], 0.1))
    assert weight.nbytes == weight.U.nbytes + weight.V.nbytes
    assert weight.describe()["U"]["kind"] == "coded"
    x = RNG.normal(0, 1, (3, 30))
    np.testing.assert_allclose(weight.operator()(x), x @ weight.materialize().T, atol=1e-12)
    assert np.linalg.norm(weight.materialize() - W) < 0.05 * np.linalg.norm(W)


def test_forward_pass_and_report_of_an_entropy_coded_model():
    """The char LM at 0.5 row-RMS steps: about 3 bits per weight, shown per matrix by the
    report; halving the step about halves the output error (20 %, 11 %, 5.4 % measured)."""
    original = charlm()
    x, _ = probe_inputs(original, batch=4, steps=30)
    want = run_stack(original.lstm_layers, x)[-1][0]
    errors = {}
    for step in (0.5, 0.25, 0.125):
        model = charlm_with(lambda W: coded_matrix(W, step))
        got = run_stack(model.lstm_layers, x)[-1][0]
        errors[step] = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert errors[0.125] < 0.6 * errors[0.25] < 0.6 * 0.6 * errors[0.5] < 0.1
    summary = summarize(charlm_with(lambda W: coded_matrix(W, 0.5)))
    rates = [w["bits_per_weight"] for layer in summary["lstm_layers"]
             for w in layer["weights"].values()]
    assert all(2.5 < rate < 3.5 for rate in rates)
    table = format_table(summary)
    for rate in rates:
        assert f"coded {rate:.1f} b/w" in table
    assert summary["lstm_bytes"] < sum(layer.nbytes for layer in original.lstm_layers) / 9


def test_quant_refuses_entropy_coded_weights():
    with pytest.raises(OptionError, match="already quantized"):
        quantize_weight(coded_matrix(RNG.normal(0, 1, (8, 8))), bits=4, scales="row")


def test_a_fixed_width_weight_is_an_ordinary_quantized_one():
    quantized, _ = coded_matrix(RNG.normal(0, 1, (8, 6))).fixed_width()
    assert isinstance(quantized, Quantized)
    assert quantized.nbytes == 8 * 6 * quantized.bits // 8 + 8 * 4  # float32 row steps


# ---- everywhere a weight goes ---------------------------------------------------------------

def test_drop_in_and_framework_exports_materialize_coded_matrices(tmp_path):
    original = rnnshrink.read(FIXTURES / "charlm.pt")
    small = charlm_with(lambda W: coded_matrix(W, 0.4, col_exp=RNG.integers(-2, 3, W.shape[1])),
                        original)
    x, _ = probe_inputs(original, batch=2, steps=20)
    write_same(small, original, tmp_path / "same.pt")
    back = rnnshrink.read(tmp_path / "same.pt")
    for got, want in zip(run_stack(back.lstm_layers, x), run_stack(small.lstm_layers, x)):
        assert np.abs(got[0] - want[0]).max() < 1e-5
    torch = pytest.importorskip("torch")
    description = export_torch(small, tmp_path / "t.pt")
    state = torch.load(tmp_path / "t.pt", weights_only=True)
    np.testing.assert_array_equal(state["lstm.weight_hh_l0"].numpy(),
                                  small.lstm_layers[0].directions[0].R.materialize(np.float32))
    assert any(": coded (bits_per_weight=" in line for line in description["materialized"])
    assert any("entropy-coded" in note for note in description["notes"])
    keras = export_keras(charlm_with(lambda W: coded_matrix(W, 0.4)), tmp_path / "k.h5")
    assert len([m for m in keras["materialized"] if ": coded (" in m]) == 4


def test_report_and_convert_commands_on_a_coded_container(tmp_path):
    model = charlm_with(lambda W: coded_matrix(W, 0.4))
    path = tmp_path / "coded.rnnshrink.h5"
    container.write(model, path)
    report = CliRunner().invoke(cli, ["report", str(path)])
    assert report.exit_code == 0, report.output
    assert "coded 3." in report.output
    result = CliRunner().invoke(cli, ["convert", str(path), "--to", "onnx", "-o",
                                      str(tmp_path / "out.onnx")])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "entropy-coded" in line]
    assert notes == ["note: 4 entropy-coded matrices re-packed at fixed width for the runtime, "
                     "which cannot decode the entropy code: 4 as their own codes (int8 / int4, "
                     "float32 row steps)"]
