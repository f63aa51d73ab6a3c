"""Shared low-rank factors: one V per stacked gate matrix, exact at full rank, joint = svd joint."""

import numpy as np
import pytest

from rnnshrink.errors import OptionError
from rnnshrink.fidelity import compare, probe_inputs
from rnnshrink.model import Dense
from rnnshrink.model.weights import LowRank
from rnnshrink.transforms.lowrank import SharedLowRank, factor_directions, saves_params
from rnnshrink.transforms.svd import SVDProjection, singular_triplets

from _models import (
    apply_checked,
    charlm,
    contract_builds,
    exact_rank_model,
    stack_model,
)


def error(original, compressed, x):
    return compare(original, compressed, x)["output_rel_error"]


def test_full_rank_factors_are_exact():
    W = Dense(np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32))
    r, [factored] = factor_directions([W], rank=6)
    assert r == 6
    np.testing.assert_allclose(factored.materialize(), W.materialize(), atol=1e-5)


@pytest.mark.parametrize("directions", [(1, 1), (2, 1)])
def test_tau_one_is_lossless_on_exact_rank_matrices(directions):
    model = exact_rank_model(rank=3, directions=directions)
    result = SharedLowRank(tau=1.0).apply(model)
    for layer in result.lstm_layers:
        for direction in layer.directions:
            assert isinstance(direction.W, LowRank) and isinstance(direction.R, LowRank)
            assert direction.R.rank == 3
    x = np.random.default_rng(1).normal(size=(4, 12, 6))
    assert error(model, result, x) < 1e-6


def test_rank_r_stores_r_times_4h_plus_d_with_one_v_for_all_gates():
    model = stack_model(sizes=(6, 40, 30), seed=2)
    result = SharedLowRank(rank=4, matrices="input").apply(model)
    H, D = 30, 40
    original = model.layer("lstm_1").directions[0].W.materialize()
    W = result.layer("lstm_1").directions[0].W
    assert isinstance(W, LowRank) and W.params == 4 * (4 * H + D)
    assert W.U.shape == (4 * H, 4) and W.V.shape == (4, D)  # one V: r x D, shared by i, f, g, o
    V = W.V.materialize()
    np.testing.assert_allclose(V @ V.T, np.eye(4), atol=1e-5)  # V = V_r^T
    U, s, Vt = singular_triplets(original, 4)
    best = (U * s) @ Vt
    for gate in range(4):  # every gate block is its rows of U times the same V
        rows = slice(gate * H, (gate + 1) * H)
        np.testing.assert_allclose(W.U.materialize()[rows] @ V, best[rows], atol=1e-5)
    residual = np.linalg.norm(W.materialize() - original)
    assert np.isclose(residual, np.sqrt(np.sum(singular_triplets(original)[1][4:] ** 2)),
                      rtol=1e-4)  # Eckart-Young: the best rank-4 approximation


@pytest.mark.parametrize("matrices, factored", [("input", "W"), ("recurrent", "R")])
def test_matrices_selects_which_role_is_factored(matrices, factored):
    result = SharedLowRank(rank=3, matrices=matrices).apply(stack_model(sizes=(6, 20, 16)))
    for layer in result.lstm_layers:
        kinds = {role: w.kind for role, w in layer.directions[0].matrices.items()}
        assert kinds == {"W": "dense", "R": "dense", factored: "lowrank"}


def test_a_factorization_that_saves_nothing_keeps_the_matrix_dense():
    assert not saves_params((24, 6), 5) and saves_params((24, 6), 4)
    model = stack_model(sizes=(6, 20, 16))
    result = SharedLowRank(rank=6).apply(model)
    first = result.layer("lstm_0").directions[0]
    assert first.W is model.layer("lstm_0").directions[0].W
    assert isinstance(first.R, LowRank)
    assert "W 80x6 kept dense (rank 6 would not save parameters)" in result.notes[0]


def test_share_next_is_the_svd_joint_projection():
    model = stack_model(sizes=(6, 40, 30), seed=3)
    shared = SharedLowRank(tau=0.6, share_next=True, matrices="recurrent").apply(model)
    joint = SVDProjection(tau=0.6, joint=True, layers="lstm_0").apply(model)
    for name in ("lstm_0", "lstm_1"):
        a, b = shared.layer(name).directions[0], joint.layer(name).directions[0]
        for role in ("W", "proj") if name == "lstm_1" else ("R", "proj"):
            if role in b.matrices:
                np.testing.assert_array_equal(a.matrices[role].materialize(),
                                              b.matrices[role].materialize())
    assert shared.layer("lstm_0").proj_size == joint.layer("lstm_0").proj_size > 0
    assert isinstance(shared.layer("lstm_1").directions[0].R, LowRank)  # no LSTM reads lstm_1


def test_share_next_does_not_factor_the_shared_input_again():
    result = SharedLowRank(rank=4, share_next=True).apply(stack_model(sizes=(6, 40, 30)))
    second = result.layer("lstm_1").directions[0]
    assert isinstance(second.W, Dense) and second.W.shape == (120, 4)


@pytest.mark.parametrize("name", ["charlm.pt", "keras2_charlm.h5"])
def test_error_falls_as_rank_grows_on_the_trained_char_lm(name):
    model = charlm(name)
    x, _ = probe_inputs(model, batch=4, steps=25)
    errors = [error(model, SharedLowRank(rank=r).apply(model), x) for r in (8, 16, 32, 64)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


RECIPES = [dict(rank=3), dict(tau=0.5), dict(rank_ratio=0.25, share_next=True),
           dict(tau=0.8, matrices="recurrent")]


@pytest.mark.parametrize("params", RECIPES)
@pytest.mark.parametrize("build", contract_builds())
def test_contract(params, build):
    apply_checked(SharedLowRank(**params), build())


@pytest.mark.parametrize("params, message", [
    (dict(), "exactly one of tau, rank, rank_ratio, got none"),
    (dict(rank=2, tau=0.5), "exactly one of tau, rank, rank_ratio, got tau, rank"),
    (dict(rank=2, matrices="gates"), "matrices must be one of both, input, recurrent"),
    (dict(rank=2, share_next=True, matrices="input"), "share_next .* got input"),
    (dict(rank_ratio=0), r"rank_ratio must be in \(0, 1\], got 0.0"),
])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(OptionError, match=message):
        SharedLowRank(**params)


def test_non_dense_input_is_refused():
    model = stack_model(sizes=(6, 20, 16))
    factored = SharedLowRank(rank=2, layers="lstm_1").apply(model)
    with pytest.raises(OptionError, match="lstm_1 W is lowrank: lowrank must come before"):
        SharedLowRank(rank=2).apply(factored)


# --- data-aware (whitened) factors ---------------------------------------------------------

def test_whitened_factors_minimise_the_error_on_data():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(600, 10)) * np.geomspace(3, 0.01, 10)  # very uneven input energy
    W = Dense(rng.normal(size=(24, 10)))
    C = X.T @ X / len(X)
    _, [plain] = factor_directions([W], rank=3)
    _, [data] = factor_directions([W], rank=3, moments=[C])
    on_data = [np.linalg.norm((W.values - f.materialize()) @ X.T) for f in (plain, data)]
    assert on_data[1] < 0.5 * on_data[0]
    # the optimum: best rank-3 approximation of W X^T (Eckart-Young), so nothing beats it
    U, s, Vt = np.linalg.svd(W.values @ X.T, full_matrices=False)
    assert np.isclose(on_data[1], np.sqrt(np.sum(s[3:] ** 2)), rtol=1e-6)


def test_data_variant_with_white_data_is_the_plain_one(monkeypatch):
    from rnnshrink.transforms import Context, lowrank

    def moments(model, x, name):
        layer = model.layer(name)
        return np.eye(layer.input_size), [np.eye(layer.out_size)] * layer.num_directions

    monkeypatch.setattr(lowrank, "layer_moments", moments)
    for share_next in (False, True):
        model = stack_model(sizes=(6, 20, 16), directions=(2, 1))
        x = probe_inputs(model)[0]
        plain = SharedLowRank(rank=4, share_next=share_next).apply(model)
        data = SharedLowRank(rank=4, share_next=share_next, data=True).apply(
            model, Context(inputs=x))
        assert [l.nbytes for l in data.lstm_layers] == [l.nbytes for l in plain.lstm_layers]
        assert compare(plain, data, x)["output_rel_error"] < 1e-5


def test_data_variant_beats_the_plain_one_at_equal_size_on_the_trained_char_lm():
    from rnnshrink.transforms import Context

    model = charlm("keras2_charlm.h5")
    x = probe_inputs(model)[0]
    plain = SharedLowRank(rank=32).apply(model)
    data = SharedLowRank(rank=32, data=True).apply(model, Context(inputs=x))
    assert [l.nbytes for l in data.lstm_layers] == [l.nbytes for l in plain.lstm_layers]
    assert error(model, data, x) < 0.8 * error(model, plain, x)


def test_data_variant_needs_calibration_inputs():
    with pytest.raises(OptionError, match="lowrank: data=true needs calibration inputs"):
        SharedLowRank(rank=3, data=True).apply(stack_model())
