"""The CLSTM SVD projection: CLSTM's rank rule, losslessness at full energy, PyTorch semantics."""

import dataclasses

import numpy as np
import pytest
import scipy.linalg

from rnnshrink.errors import OptionError
from rnnshrink.fidelity import compare, probe_inputs
from rnnshrink.model import Dense, LSTMLayer, OtherLayer, run_stack
from rnnshrink.model.weights import LowRank
from rnnshrink.transforms import Context, svd
from rnnshrink.transforms.svd import (
    SVDProjection,
    projection_rank,
    refit_reader,
    singular_triplets,
    split_projection,
    truncated_svd,
)
from rnnshrink.transforms.whitening import refit_on_data

from _models import (
    apply_checked,
    charlm,
    contract_builds,
    exact_rank_model,
    stack_model,
)

CHARLM = ["charlm.pt", "keras2_charlm.h5"]


def error(original, compressed, x):
    """Relative error of the model's output (its Dense head), see rnnshrink.fidelity."""
    return compare(original, compressed, x)["output_rel_error"]


# --- the rank rule ---------------------------------------------------------------------------

@pytest.mark.parametrize("tau, rank", [
    (0.0, 0), (-0.5, 0), (0.64, 1), (9 / 14, 1), (0.65, 2), (13 / 14, 2), (0.93, 3), (1.0, 3),
])
def test_projection_rank_follows_clstm_on_a_hand_made_spectrum(tau, rank):
    # energies 9, 13, 14 of 14: the smallest k with sum(s[:k]^2) / 14 >= tau
    assert projection_rank(np.array([3.0, 2.0, 1.0]), tau) == rank


def test_projection_rank_of_a_zero_matrix_is_zero_and_tau_above_one_is_refused():
    assert projection_rank(np.zeros(3), 0.5) == 0
    with pytest.raises(ValueError, match="at most 1"):
        projection_rank(np.ones(3), 1.5)


@pytest.mark.parametrize("name", CHARLM)
def test_energy_of_the_spectrum_is_the_frobenius_norm(name):
    model = charlm(name)
    for layer in model.lstm_layers:
        R = layer.directions[0].R.materialize()
        _, s, _ = singular_triplets(R)
        assert np.isclose(np.sum(s**2), np.linalg.norm(R) ** 2, rtol=1e-10)


def test_partial_svd_matches_the_full_one_without_a_full_svd(monkeypatch):
    rng = np.random.default_rng(0)
    Q1, _ = np.linalg.qr(rng.normal(size=(240, 128)))
    Q2, _ = np.linalg.qr(rng.normal(size=(128, 128)))
    M = (Q1 * 0.8 ** np.arange(128)) @ Q2.T
    U, s, Vt = singular_triplets(M)
    full = {"calls": 0}
    original = scipy.linalg.svd

    def counted(*args, **kwargs):
        full["calls"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(scipy.linalg, "svd", counted)
    monkeypatch.setattr(svd, "PARTIAL_MIN_WIDTH", 100)
    Uk, sk, Vtk = singular_triplets(M, 4)
    assert full["calls"] == 0
    np.testing.assert_allclose(sk, s[:4], rtol=1e-9)
    np.testing.assert_allclose((Uk * sk) @ Vtk, (U[:, :4] * s[:4]) @ Vt[:4], atol=1e-9)
    singular_triplets(M, 5)  # more than 1/32 of the width: the full SVD
    assert full["calls"] == 1


@pytest.mark.parametrize("tau", [0.5, 0.9, 0.95])
def test_tau_rule_on_a_partial_svd_gives_the_full_svds_rank_and_factors(monkeypatch, tau):
    rng = np.random.default_rng(1)
    Q1, _ = np.linalg.qr(rng.normal(size=(600, 320)))
    Q2, _ = np.linalg.qr(rng.normal(size=(320, 320)))
    M = (Q1 * 0.8 ** np.arange(320)) @ Q2.T  # energies 0.64^i: tau 0.9 needs 6 of 320
    U, s, Vt = truncated_svd(M, tau=tau)  # 320 < PARTIAL_MIN_WIDTH: full SVD
    assert s.size == projection_rank(np.linalg.svd(M, compute_uv=False), tau)
    full = {"calls": 0}
    original = scipy.linalg.svd

    def counted(*args, **kwargs):
        full["calls"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(scipy.linalg, "svd", counted)
    monkeypatch.setattr(svd, "PARTIAL_MIN_WIDTH", 100)  # Gram path up to 80 triplets
    Uk, sk, Vtk = truncated_svd(M, tau=tau)
    assert full["calls"] == 0
    assert sk.size == s.size
    np.testing.assert_allclose(sk, s, rtol=1e-9)
    signs = np.sign(np.sum(Uk * U, axis=0))
    np.testing.assert_allclose(Uk * signs, U, atol=1e-8)
    np.testing.assert_allclose(Vtk * signs[:, None], Vt, atol=1e-8)


def test_tau_rule_past_the_partial_limit_uses_the_full_svd(monkeypatch):
    rng = np.random.default_rng(2)
    M = rng.normal(size=(600, 320))  # flat spectrum: tau 0.7 needs more than 80
    monkeypatch.setattr(svd, "PARTIAL_MIN_WIDTH", 100)
    U, s, Vt = truncated_svd(M, tau=0.7)
    assert s.size == projection_rank(np.linalg.svd(M, compute_uv=False), 0.7) > 80


# --- the math of one direction ---------------------------------------------------------------

def project(matrices, rank):
    """CLSTM's projection of the stacked ``matrices`` at ``rank``: proj and the new blocks."""
    return split_projection(*singular_triplets(np.vstack(matrices), rank),
                            [m.shape[0] for m in matrices])


def test_full_rank_projection_and_refit_are_exact():
    rng = np.random.default_rng(1)
    R, K = rng.normal(size=(40, 10)), rng.normal(size=(7, 10))
    proj, [R_new] = project([R], 10)
    np.testing.assert_allclose(R_new @ proj, R, atol=1e-12)
    np.testing.assert_allclose(refit_reader(K, proj) @ proj, K, atol=1e-12)
    proj, [R_new, K_new] = project([R, K], 10)
    np.testing.assert_allclose(np.vstack([R_new, K_new]) @ proj, np.vstack([R, K]), atol=1e-12)


def test_refit_is_the_least_squares_solution():
    rng = np.random.default_rng(2)
    R, K = rng.normal(size=(40, 10)), rng.normal(size=(7, 10))
    proj, _ = project([R], 4)
    residual = refit_reader(K, proj) @ proj - K
    np.testing.assert_allclose(residual @ proj.T, 0, atol=1e-10)  # normal equations


# --- the transform ---------------------------------------------------------------------------

@pytest.mark.parametrize("directions", [(1, 1), (2, 1), (2, 2)])
@pytest.mark.parametrize("joint", [False, True])
def test_tau_one_is_lossless(directions, joint):
    model = exact_rank_model(rank=3, directions=directions)
    x = np.random.default_rng(0).normal(size=(4, 12, 6))
    result = SVDProjection(tau=1.0, joint=joint).apply(model)
    for layer in result.lstm_layers:
        assert layer.proj_size == 3 and layer.source["svd_rank"] == 3
    assert error(model, result, x) < 1e-6


def test_tau_one_keeps_a_full_rank_model_unchanged():
    model = stack_model(sizes=(6, 20, 16))
    result = SVDProjection(tau=1.0).apply(model)
    assert all(a is b for a, b in zip(result.layers, model.layers))
    assert len(result.notes) == 2 and all("kept unchanged" in n for n in result.notes)


def test_joint_projection_is_shared_by_both_matrices():
    model = stack_model(sizes=(6, 20, 16), seed=3)
    result = SVDProjection(rank=5, joint=True, layers="lstm_0").apply(model)
    first, second = result.layer("lstm_0").directions[0], result.layer("lstm_1").directions[0]
    R = model.layer("lstm_0").directions[0].R.materialize()
    W = model.layer("lstm_1").directions[0].W
    stacked_U = np.vstack([first.R.materialize(), second.W.materialize()])
    np.testing.assert_allclose(stacked_U.T @ stacked_U, np.eye(5), atol=1e-5)  # one U_r
    M = np.vstack([R, W.materialize()])
    U, s, Vt = singular_triplets(M, 5)
    np.testing.assert_allclose(first.proj.materialize(), s[:, None] * Vt, atol=1e-5)
    np.testing.assert_allclose(stacked_U @ first.proj.materialize(), (U * s) @ Vt, atol=1e-5)
    assert "joint SVD with lstm_1" in result.notes[0]


def test_rank_gives_the_clstm_parameter_count():
    model = stack_model(sizes=(6, 40, 30), directions=(2, 1))
    result = SVDProjection(rank=5).apply(model)
    first, second = result.lstm_layers
    assert first.proj_size == 5 and first.output_size == 10
    assert second.input_size == 10 and second.proj_size == 5
    assert result.layer("dense").W.shape == (7, 5)
    D, H, r, bias_terms = 6, 40, 5, 2
    assert first.params == 2 * (D * 4 * H + H * r + r * 4 * H + 4 * H * bias_terms)
    H1 = 30
    assert second.params == 10 * 4 * H1 + H1 * r + r * 4 * H1 + 4 * H1 * bias_terms


def test_rank_ratio_rounds_the_hidden_size():
    result = SVDProjection(rank_ratio=0.26).apply(stack_model(sizes=(6, 40, 30)))
    assert [layer.proj_size for layer in result.lstm_layers] == [10, 8]


def test_bidirectional_consumer_halves_are_refit_per_direction():
    model = stack_model(sizes=(6, 20, 16), directions=(2, 1), seed=4)
    result = SVDProjection(rank=4, layers="lstm_0").apply(model)
    K = model.layer("lstm_1").directions[0].W.materialize()
    K_new = result.layer("lstm_1").directions[0].W.materialize()
    for d, direction in enumerate(result.layer("lstm_0").directions):
        expected = refit_reader(K[:, 20 * d:20 * (d + 1)], direction.proj.materialize())
        np.testing.assert_allclose(K_new[:, 4 * d:4 * (d + 1)], expected, atol=1e-5)


def test_bidirectional_directions_share_the_larger_rank():
    model = exact_rank_model(rank=3, directions=(2, 1))
    layer = model.layer("lstm_0")
    changed = LSTMLayer(layer.name, [layer.directions[0], _with_rank(layer.directions[1], 2)],
                        inputs=layer.inputs)
    result = SVDProjection(tau=1.0, layers="lstm_0").apply(model.replace_layer("lstm_0", changed))
    assert result.layer("lstm_0").proj_size == 3
    assert "rule gave 3/2" in result.notes[0]


def _with_rank(direction, rank):
    U, s, Vt = singular_triplets(direction.R.materialize(), rank)
    return dataclasses.replace(direction, R=Dense((U * s) @ Vt))


def test_unknown_consumer_keeps_the_width():
    model = stack_model(sizes=(6, 40, 30), known=False)
    result = SVDProjection(rank=6).apply(model)
    for layer, before in zip(result.lstm_layers, model.lstm_layers):
        assert layer.output_size == before.output_size and layer.proj_size == 0
        R = layer.directions[0].R
        assert isinstance(R, LowRank) and R.rank == 6
        assert R.params == 4 * layer.hidden_size * 6 + 6 * layer.hidden_size
        assert layer.source["svd_rank"] == 6
    assert all("consumer unknown, recurrent matrix factored at rank 6 without projection" in n
               for n in result.notes)
    assert error(model, result, probe_inputs(model)[0]) < 1


def test_a_consumer_that_cannot_be_refit_keeps_the_width():
    model = stack_model(sizes=(6, 20, 16))
    dense = dataclasses.replace(model.layer("dense"), inputs=["dropout"])
    layers = model.layers[:3] + [OtherLayer("dropout", "Dropout", inputs=["lstm_1"]), dense]
    result = SVDProjection(rank=3, layers="lstm_1").apply(model.replace(layers=layers))
    assert result.layer("lstm_1").output_size == 16
    assert "consumer dropout (Dropout) cannot be refit" in result.notes[0]


def test_torch_projection_fixture_is_composed():
    model = charlm("torch_bidir_proj.pt")
    result, _ = apply_checked(SVDProjection(rank=4), model)
    first, second = result.lstm_layers
    assert first.proj_size == 4 and second.input_size == 8


def test_existing_projection_is_composed():
    model = stack_model(sizes=(6, 20, 16), proj=6, seed=5)
    layer = model.layer("lstm_1")
    result = SVDProjection(rank=3, layers="lstm_1").apply(model)
    new = result.layer("lstm_1").directions[0]
    assert result.layer("lstm_1").proj_size == 3 and result.layer("dense").W.shape == (7, 3)
    old = layer.directions[0]
    product = old.R.materialize() @ old.proj.materialize()
    U, s, Vt = singular_triplets(product, 3)
    np.testing.assert_allclose(new.R.materialize() @ new.proj.materialize(), (U * s) @ Vt,
                               atol=1e-5)


@pytest.mark.parametrize("name", CHARLM)
def test_error_falls_as_tau_grows_on_the_trained_char_lm(name):
    model = charlm(name)
    x, _ = probe_inputs(model, batch=4, steps=25)
    errors = [error(model, SVDProjection(tau=tau).apply(model), x) for tau in (0.3, 0.5, 0.7, 0.9)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    # measured: 0.98 / 0.66 / 0.47 / 0.25 (Keras file, token probes): CLSTM without retraining
    # loses what h carries outside the kept subspace; a wrong refit gives about 1
    assert errors[-1] < 0.3


@pytest.mark.parametrize("build", [
    lambda: stack_model(sizes=(6, 20, 16), seed=6),
    lambda: stack_model(sizes=(6, 20, 16), directions=(2, 2), seed=6),
    charlm,
])
def test_projection_is_pytorch_proj_size(build):
    torch = pytest.importorskip("torch")
    result = SVDProjection(rank=4).apply(build())
    x, _ = probe_inputs(result, batch=3, steps=9)
    inputs = x
    for layer, (y, _, _) in zip(result.lstm_layers, run_stack(result.lstm_layers, x)):
        lstm = torch.nn.LSTM(layer.input_size, layer.hidden_size, batch_first=True,
                             bidirectional=layer.num_directions == 2,
                             proj_size=layer.proj_size).double()
        with torch.no_grad():
            for direction, suffix in zip(layer.directions, ("_l0", "_l0_reverse")):
                weights = {"weight_ih": direction.W, "weight_hh": direction.R,
                           "weight_hr": direction.proj}
                for name, weight in weights.items():
                    getattr(lstm, name + suffix).copy_(torch.from_numpy(weight.materialize()))
                getattr(lstm, "bias_ih" + suffix).copy_(torch.from_numpy(direction.b.astype(float)))
                getattr(lstm, "bias_hh" + suffix).zero_()
            expected = lstm(torch.from_numpy(inputs))[0].numpy()
        np.testing.assert_allclose(y, expected, atol=1e-5)
        inputs = y


# --- the common contract ---------------------------------------------------------------------

RECIPES = [dict(tau=0.6), dict(rank=3), dict(rank_ratio=0.5, joint=True), dict(tau=0.0)]


@pytest.mark.parametrize("params", RECIPES)
@pytest.mark.parametrize("build", contract_builds())
def test_contract(params, build):
    model = build()
    result, _ = apply_checked(SVDProjection(**params), model)
    assert sum(layer.nbytes for layer in result.lstm_layers) < sum(
        layer.nbytes for layer in model.lstm_layers)


def test_tau_zero_is_clamped_to_rank_one():
    result = SVDProjection(tau=0.0).apply(stack_model(sizes=(6, 20, 16)))
    assert [layer.proj_size for layer in result.lstm_layers] == [1, 1]
    assert "rule gave 0" in result.notes[0]


@pytest.mark.parametrize("params, message", [
    (dict(), "exactly one of tau, rank, rank_ratio, got none"),
    (dict(tau=0.5, rank=3), "exactly one of tau, rank, rank_ratio, got tau, rank"),
    (dict(tau=1.3), r"tau must be in \[0.0, 1.0\], got 1.3"),
    (dict(rank=0), r"rank must be in \[1, inf\], got 0"),
    (dict(rank_ratio=0), r"rank_ratio must be in \(0, 1\], got 0.0"),
])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(OptionError, match=message):
        SVDProjection(**params)


def test_unknown_layer_names_list_the_models_layers():
    with pytest.raises(OptionError, match="nope.*LSTM layers are lstm_0, lstm_1"):
        SVDProjection(rank=2, layers="nope").apply(stack_model())


def test_non_dense_input_is_refused():
    model = stack_model(sizes=(6, 20, 16))
    layer = model.layer("lstm_0")
    R = layer.directions[0].R.materialize()
    factored = dataclasses.replace(layer.directions[0], R=LowRank(R[:, :1] * 0 + 1, R[:1]))
    model = model.replace_layer("lstm_0", dataclasses.replace(layer, directions=[factored]))
    with pytest.raises(OptionError, match="lstm_0 R is lowrank: svd must come before prune/quant"):
        SVDProjection(rank=2).apply(model)


# --- data-aware (whitened) variant ---------------------------------------------------------

def white_moments(module, monkeypatch):
    """Make ``module``'s data-aware transforms see white data: every ``C = I``."""
    def moments(model, x, name):
        layer = model.layer(name)
        return np.eye(layer.input_size), [np.eye(layer.out_size)] * layer.num_directions

    monkeypatch.setattr(module, "layer_moments", moments)


@pytest.mark.parametrize("params, build", [
    (dict(rank=5), lambda: stack_model(sizes=(6, 20, 16))),
    (dict(tau=0.8, joint=True), lambda: stack_model(sizes=(6, 20, 16))),
    (dict(rank=5), lambda: stack_model(sizes=(6, 20, 16), directions=(2, 2), known=False)),
    (dict(rank=4), lambda: stack_model(sizes=(6, 20, 16), directions=(2, 1))),
])
def test_data_variant_with_white_data_is_the_plain_one(params, build, monkeypatch):
    white_moments(svd, monkeypatch)
    model = build()
    x = probe_inputs(model)[0]
    plain = SVDProjection(**params).apply(model)
    data = SVDProjection(**params, data=True).apply(model, Context(inputs=x))
    assert [l.nbytes for l in data.lstm_layers] == [l.nbytes for l in plain.lstm_layers]
    assert compare(plain, data, x)["output_rel_error"] < 1e-5


def test_whitened_refit_is_the_least_squares_fit_on_data():
    rng = np.random.default_rng(3)
    m = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12))  # correlated states
    K, proj = rng.normal(size=(7, 12)), rng.normal(size=(4, 12))
    fitted = refit_on_data(K, proj, m.T @ m / len(m))
    best = np.linalg.lstsq(m @ proj.T, m @ K.T, rcond=None)[0].T
    np.testing.assert_allclose(fitted, best, rtol=1e-6, atol=1e-9)


def test_data_variant_beats_the_plain_one_at_equal_size_on_the_trained_char_lm():
    model = charlm("keras2_charlm.h5")
    x = probe_inputs(model)[0]
    plain = SVDProjection(rank=32).apply(model)
    for joint in (False, True):
        data = SVDProjection(rank=32, joint=joint, data=True).apply(model, Context(inputs=x))
        assert [l.nbytes for l in data.lstm_layers] == [l.nbytes for l in plain.lstm_layers]
        assert error(model, data, x) < 0.8 * error(model, plain, x)
    assert "whitened by calibration data" in data.notes[-1]


def test_data_variant_composes_an_existing_projection():
    model = stack_model(sizes=(6, 20, 16), proj=8)
    x = probe_inputs(model)[0]
    out = SVDProjection(rank=3, data=True).apply(model, Context(inputs=x))
    assert out.layer("lstm_1").proj_size == 3
    assert out.layer("lstm_1").directions[0].proj.shape == (3, 16)
    assert error(model, out, x) < error(model, SVDProjection(rank=3).apply(model), x)


def test_data_variant_needs_calibration_inputs():
    with pytest.raises(OptionError, match="svd: data=true needs calibration inputs"):
        SVDProjection(rank=3, data=True).apply(stack_model())
