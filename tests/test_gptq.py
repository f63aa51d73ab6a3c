"""GPTQ codes for quant (method=gptq): same grid as rounding, lower output error."""

import dataclasses

import numpy as np
import pytest

from rnnshrink.errors import OptionError
from rnnshrink.fidelity import compare, probe_inputs
from rnnshrink.model import Dense, run_layer
from rnnshrink.model.weights import LowRank, Quantized
from rnnshrink.report import summarize
from rnnshrink.transforms import MagnitudePrune, Quantize
from rnnshrink.transforms.base import Context
from rnnshrink.transforms.gptq import (gptq_codes, gptq_round, hessian, inverse_cholesky,
                                      lstm_samples, sample_index)
from rnnshrink.transforms.quant import quantize_matrix

from _models import assert_contract, assert_unchanged, charlm, snapshot, stack_model

GRIDS = [dict(scales="tensor"), dict(scales="row"), dict(scales="group", group=16),
         dict(scales="group", group=7)]


@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_identity_hessian_gives_the_rounded_codes(grid, bits):
    W = np.random.default_rng(bits).normal(0, 1, (12, 40))
    rtn = quantize_matrix(W, bits, **grid)
    codes = gptq_codes(W, np.eye(40), rtn.steps, bits, rtn.group)
    np.testing.assert_array_equal(codes, rtn.codes)


def _correlated(rng, n, cols):
    """Inputs with strongly correlated coordinates, (n, cols)."""
    return rng.normal(0, 1, (n, cols // 4)) @ rng.normal(0, 1, (cols // 4, cols)) \
        + 0.1 * rng.normal(0, 1, (n, cols))


@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("bits", [3, 4])
def test_lower_output_error_with_correlated_inputs(grid, bits):
    rng = np.random.default_rng(0)
    W, X = rng.normal(0, 1, (64, 200)), _correlated(rng, 2000, 200)
    rtn = quantize_matrix(W, bits, **grid)
    gptq = quantize_matrix(W, bits, **grid, inputs=X)
    error = {name: np.linalg.norm((W - q.materialize()) @ X.T) for name, q in
             (("rtn", rtn), ("gptq", gptq))}
    assert error["gptq"] < 0.8 * error["rtn"]
    # The same grid: same steps, same kind, same bytes; codes on the 2^b - 1 levels.
    np.testing.assert_array_equal(gptq.steps, rtn.steps)
    assert (gptq.group, gptq.bits, gptq.nbytes) == (rtn.group, rtn.bits, rtn.nbytes)
    assert np.abs(gptq.codes.astype(int)).max() <= 2 ** (bits - 1) - 1
    assert np.abs(gptq.codes.astype(int)).max() == 2 ** (bits - 1) - 1


def _plain_gptq(W, S, U):
    """Algorithm 1 without lazy updates: round column j, pass its error on to every later one."""
    W, codes = W.copy(), np.zeros(W.shape, np.int64)
    for j in range(W.shape[1]):
        codes[:, j] = np.round(W[:, j] / S[:, j])
        error = (W[:, j] - codes[:, j] * S[:, j]) / U[j, j]
        W[:, j + 1:] -= np.outer(error, U[j, j + 1:])
    return codes


@pytest.mark.parametrize("block", [128, 37])
def test_blocked_updates_give_the_plain_algorithm_and_rows_are_independent(block):
    rng = np.random.default_rng(4)
    W, X = rng.normal(0, 1, (96, 200)), _correlated(rng, 1000, 200)
    S = np.exp(rng.normal(-1, 0.3, W.shape))
    U = inverse_cholesky(hessian(X))
    codes = gptq_round(W, None, S, U=U, block=block)
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, _plain_gptq(W, S, U))
    rows = np.array([3, 4, 50, 95])
    np.testing.assert_array_equal(gptq_round(W[rows], None, S[rows], U=U, block=block),
                                  codes[rows])
    single = gptq_round(W, None, S, U=U, block=block, dtype=np.float32)
    assert np.count_nonzero(single != codes) <= 0.001 * codes.size  # ties only


def test_mask_keeps_pruned_entries_at_zero():
    rng = np.random.default_rng(1)
    W, X = rng.normal(0, 1, (32, 64)), _correlated(rng, 1000, 64)
    mask = rng.random(W.shape) < 0.5
    W = np.where(mask, W, 0.0)
    rtn = quantize_matrix(W, 4, mask=mask)
    gptq = quantize_matrix(W, 4, mask=mask, inputs=X)
    assert not gptq.codes[~mask].any()
    assert np.linalg.norm((W - gptq.materialize()) @ X.T) < np.linalg.norm((W - rtn.materialize()) @ X.T)


def test_hessian_and_samples():
    model = stack_model(directions=(2, 1), proj=4)
    x = probe_inputs(model, batch=3, steps=6)[0]
    index = sample_index(3, 6)
    assert len(index[0]) == 18
    assert len(sample_index(300, 100, limit=1000)[0]) == 1000
    for layer in model.lstm_layers:
        inputs = x if layer.name == "lstm_0" else run_layer(model.layer("lstm_0"), x)[0]
        y = run_layer(layer, inputs)[0]
        samples = lstm_samples(layer, inputs, y, index)
        rows, times = index
        out = layer.out_size
        for k, found in enumerate(samples):
            np.testing.assert_array_equal(found["W"], inputs[rows, times])
            h = y[..., k * out:(k + 1) * out]
            # h_{t-1}: the previous step in the direction's own order, zero before the first.
            shift = 1 if k == 1 else -1
            first = times == (5 if k == 1 else 0)
            assert not found["R"][first].any()
            later = ~first
            np.testing.assert_array_equal(found["R"][later], h[rows[later], times[later] + shift])
            if layer.proj_size:  # proj reads m: proj · m_t is the layer's output h_t
                proj = layer.directions[k].proj.materialize()
                np.testing.assert_allclose(found["proj"] @ proj.T, h[rows, times], atol=1e-12)
    H = hessian(samples[0]["W"])
    np.testing.assert_allclose(H, samples[0]["W"].T @ samples[0]["W"] / 18)


@pytest.mark.parametrize("params", [dict(bits=4, group=64), dict(bits=3, group=64)],
                         ids=lambda p: Quantize(**p).spec())
def test_lower_error_on_charlm(params):
    model = charlm()
    x, probe = probe_inputs(model, batch=4, steps=40)
    rtn = Quantize(**params).apply(model)
    gptq = Quantize(method="gptq", **params).apply(model, Context(inputs=x, probe=probe))
    # Measured on these probes: 0.13 -> 0.10 (4 bits), 0.27 -> 0.17 (3 bits).
    errors = [compare(model, q, x)["output_rel_error"] for q in (rtn, gptq)]
    assert errors[1] < 0.85 * errors[0]
    assert summarize(gptq)["lstm_bytes"] == summarize(rtn)["lstm_bytes"]
    for layer, layer0 in zip(gptq.lstm_layers, rtn.lstm_layers):
        for role, weight in layer.directions[0].matrices.items():
            weight0 = layer0.directions[0].matrices[role]
            assert isinstance(weight, Quantized) and weight.nbytes == weight0.nbytes
            np.testing.assert_array_equal(weight.steps, weight0.steps)
            assert np.abs(weight.codes.astype(int)).max() <= 2 ** (params["bits"] - 1) - 1
    assert any("method=gptq calibrated on" in note for note in gptq.notes)


def test_projection_lowrank_and_pruned_models():
    model = stack_model(directions=(2, 1), proj=4)
    x = probe_inputs(model, batch=4, steps=20)[0]
    context = Context(inputs=x)
    before = snapshot(model)
    out = Quantize(bits=4, scales="row", method="gptq").apply(model, context)
    assert_unchanged(model, before)
    assert isinstance(out.layer("lstm_1").directions[0].proj, Quantized)
    assert_contract(model, out, x)

    layer = model.layer("lstm_0")
    R = layer.directions[0].R.values
    U, s, Vt = np.linalg.svd(R, full_matrices=False)
    lowrank = LowRank(Dense((U[:, :4] * s[:4]).astype(np.float32)), Dense(Vt[:4].astype(np.float32)))
    directions = [dataclasses.replace(layer.directions[0], R=lowrank), layer.directions[1]]
    factored = model.replace_layer("lstm_0", dataclasses.replace(layer, directions=directions))
    out = Quantize(bits=8, method="gptq").apply(factored, context)
    R_q = out.layer("lstm_0").directions[0].R
    assert isinstance(R_q.U, Quantized) and isinstance(R_q.V, Quantized)

    pruned = MagnitudePrune(sparsity=0.6).apply(model)
    out = Quantize(bits=4, method="gptq").apply(pruned, context)
    for layer, before in zip(out.lstm_layers, pruned.lstm_layers):
        for role, weight in layer.directions[0].matrices.items():
            np.testing.assert_array_equal(weight.mask, before.directions[0].matrices[role].mask)
            assert not weight.codes[~weight.mask].any()
    assert_contract(model, out, x)


def test_needs_calibration_inputs_and_checks_parameters():
    with pytest.raises(OptionError, match="method=gptq needs calibration inputs"):
        Quantize(bits=4, method="gptq").apply(stack_model())
    with pytest.raises(OptionError, match="method=gptq needs calibration inputs"):
        Quantize(bits=4, method="gptq").apply(stack_model(), Context())
    with pytest.raises(OptionError, match="do not apply to bits=16"):
        Quantize(bits=16, method="gptq")
    with pytest.raises(OptionError, match="damp=0.1 applies to method=gptq only"):
        Quantize(bits=4, damp=0.1)
    with pytest.raises(OptionError, match="method must be one of rtn, gptq"):
        Quantize(bits=4, method="awq")


def test_gptq_reads_the_calibration_inputs_given_for_a_later_layer():
    """A per-layer .npz mapping reaches GPTQ: lstm_1's H comes from its given inputs."""
    from rnnshrink.fidelity import CalibrationInputs

    model = stack_model(sizes=(6, 10, 8))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 20, 6))
    given = _correlated(rng, 80, 12)[:, :10].reshape(4, 20, 10) * 5.0
    step = Quantize(bits=3, method="gptq", layers="lstm_1")
    mapped = step.apply(model, Context(inputs=CalibrationInputs(x, {"lstm_1": given})))
    traced = step.apply(model, Context(inputs=x))
    direction = model.layer("lstm_1").directions[0]
    expected = quantize_matrix(direction.W.materialize(), 3,
                               inputs=given.reshape(-1, 10))
    got = mapped.layer("lstm_1").directions[0].W
    np.testing.assert_array_equal(got.codes, expected.codes)
    assert not np.array_equal(got.codes, traced.layer("lstm_1").directions[0].W.codes)
