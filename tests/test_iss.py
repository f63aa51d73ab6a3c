"""Intrinsic Sparse Structures (methods.md §3): groups, proximal step, unit removal, zeroing."""

import dataclasses

import numpy as np
import pytest

import rnnshrink
from rnnshrink.errors import OptionError
from rnnshrink.fidelity import compare, probe_inputs
from rnnshrink.model import HARD_SIGMOID_KERAS2, Activation, Dense, run_stack
from rnnshrink.transforms import ISS, Context, MagnitudePrune
from rnnshrink.transforms.iss import (
    data_units,
    gate_rows,
    group_energy,
    group_norms,
    proximal_factors,
    shrink_groups,
)
from rnnshrink.transforms.whitening import refit_on_data

from _models import (
    FIXTURES,
    apply_checked,
    assert_contract,
    assert_unchanged,
    charlm,
    snapshot,
    stack_model,
)


def group_masks(hidden, inputs, consumer_rows, k):
    """Boolean masks of group k over (W, R, b, consumer columns) built from the definition."""
    W = np.zeros((4 * hidden, inputs), bool)
    R = np.zeros((4 * hidden, hidden), bool)
    b = np.zeros(4 * hidden, bool)
    C = np.zeros((consumer_rows, hidden), bool)
    rows = [g * hidden + k for g in range(4)]
    W[rows], R[rows], R[:, k], b[rows], C[:, k] = True, True, True, True, True
    return W, R, b, C


def test_group_energy_is_the_union_of_a_b_c():
    rng = np.random.default_rng(0)
    H, D, out = 5, 3, 7
    W, R, b, C = (rng.normal(size=(4 * H, D)), rng.normal(size=(4 * H, H)),
                  rng.normal(size=4 * H), rng.normal(size=(out, H)))
    energy = group_energy(W, R, b, [C])
    for k in range(H):
        masks = group_masks(H, D, out, k)
        expected = sum((a[m] ** 2).sum() for a, m in zip((W, R, b, C), masks))
        assert energy[k] == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(group_norms(energy), np.sqrt(energy + 1e-8))


def test_proximal_step_on_a_single_group():
    rng = np.random.default_rng(1)
    W, R, b, C = (rng.normal(size=(4, 3)), rng.normal(size=(4, 1)), rng.normal(size=4),
                  rng.normal(size=(2, 1)))
    norm = np.sqrt((W**2).sum() + (R**2).sum() + (b**2).sum() + (C**2).sum() + 1e-8)
    lam = 0.3 * norm
    [factor] = proximal_factors(group_norms(group_energy(W, R, b, [C])), lam)
    assert factor == pytest.approx(1 - lam / norm, rel=1e-12)
    W2, R2, b2, [C2] = shrink_groups(W, R, b, [C], np.array([factor]))
    for new, old in ((W2, W), (R2, R), (b2, b), (C2, C)):
        np.testing.assert_allclose(new, old * (1 - lam / norm), rtol=1e-12)
    assert proximal_factors(np.array([norm]), 2 * norm)[0] == 0.0


def test_overlapping_weights_are_scaled_by_both_groups():
    rng = np.random.default_rng(2)
    H = 2
    W, R, b = rng.normal(size=(8, 3)), rng.normal(size=(8, 2)), rng.normal(size=8)
    f = np.array([0.5, 0.25])
    W2, R2, b2, _ = shrink_groups(W, R, b, [], f)
    assert R2[0, 1] == R[0, 1] * 0.5 * 0.25  # row of unit 0, column of unit 1
    assert R2[0, 0] == R[0, 0] * 0.5  # R[gH+k, k] is in group k only
    assert R2[H + 1, 1] == R[H + 1, 1] * 0.25
    np.testing.assert_array_equal(W2[gate_rows([1], H)], W[gate_rows([1], H)] * 0.25)


def zero_groups(model, name, dead):
    """``model`` with the groups of units ``dead[d]`` of layer ``name`` set to zero (a, b, c)."""
    layer = model.layer(name)
    hidden = layer.hidden_size
    directions = []
    for d, direction in enumerate(layer.directions):
        rows = gate_rows(dead[d], hidden)
        W, R, b = direction.W.values.copy(), direction.R.values.copy(), direction.b.copy()
        W[rows], R[rows], R[:, dead[d]], b[rows] = 0, 0, 0, 0
        directions.append(dataclasses.replace(direction, W=Dense(W), R=Dense(R), b=b))
    model = model.replace_layer(name, dataclasses.replace(layer, directions=directions))
    for consumer in model.consumers(name):
        columns = np.concatenate([d * hidden + np.asarray(u, int) for d, u in enumerate(dead)])
        if consumer.kind == "dense":
            K = consumer.W.values.copy()
            K[:, columns] = 0
            model = model.replace_layer(consumer.name, dataclasses.replace(consumer, W=Dense(K)))
        else:
            parts = []
            for part in consumer.directions:
                K = part.W.values.copy()
                K[:, columns] = 0
                parts.append(dataclasses.replace(part, W=Dense(K)))
            model = model.replace_layer(consumer.name,
                                        dataclasses.replace(consumer, directions=parts))
    return model


def final_output(model, x):
    """The Dense head's output after the LSTM stack."""
    y = run_stack(model.lstm_layers, x)[-1][0]
    dense = model.layer("dense")
    return y @ dense.W.materialize().T + dense.b


@pytest.mark.parametrize("param", [dict(threshold=1e-3), dict(lam=1e-6), dict(keep=0.8)])
def test_removing_zero_groups_leaves_outputs_unchanged(param):
    model = zero_groups(stack_model(sizes=(6, 10, 8)), "lstm_0", [[1, 4]])
    x = probe_inputs(model)[0]
    out = ISS(layers="lstm_0", **param).apply(model)
    assert out.layer("lstm_0").hidden_size == 8
    assert out.layer("lstm_0").source["iss_kept"] == [[0, 2, 3, 5, 6, 7, 8, 9]]
    assert out.layer("lstm_1").input_size == 8
    if "lam" not in param:
        np.testing.assert_allclose(final_output(out, x), final_output(model, x), rtol=0, atol=1e-12)


def test_bidirectional_removal_on_fixture_is_exact():
    path = FIXTURES / "keras2_bidir_hardsig.h5"
    if not path.exists():
        pytest.skip("fixture not generated yet")
    original = rnnshrink.read(path)
    hidden = original.layer("bidirectional").hidden_size
    # Direction 0 loses units 2 and 5, direction 1 only unit 0: both keep H - 1 (shared size).
    model = zero_groups(original, "bidirectional", [[2, 5], [0]])
    x = probe_inputs(model)[0]
    out = ISS(threshold=1e-3, layers="bidirectional").apply(model)
    layer = out.layer("bidirectional")
    assert layer.hidden_size == hidden - 1
    kept = layer.source["iss_kept"]
    assert 0 not in kept[1] and len(kept[0]) == hidden - 1 and (2 in kept[0]) != (5 in kept[0])
    assert out.layer("lstm_1").input_size == 2 * (hidden - 1)
    y0 = run_stack(model.lstm_layers, x)[-1][0]
    y1 = run_stack(out.lstm_layers, x)[-1][0]
    np.testing.assert_allclose(y1, y0, rtol=0, atol=1e-12)
    assert_contract(model, out, x)


def test_keep_one_is_the_identity():
    model = charlm()
    out, error = apply_checked(ISS(keep=1.0), model)
    assert error == 0.0
    for layer, layer0 in zip(out.lstm_layers, model.lstm_layers):
        assert layer.hidden_size == layer0.hidden_size
        for d, d0 in zip(layer.directions, layer0.directions):
            np.testing.assert_array_equal(d.W.values, d0.W.values)
            np.testing.assert_array_equal(d.R.values, d0.R.values)
            np.testing.assert_array_equal(d.b, d0.b)


@pytest.mark.parametrize("keep, hidden", [(0.75, 96), (0.5, 64), (0.01, 1)])
def test_keep_ratio_gives_the_hidden_size(keep, hidden):
    model = charlm()
    out, _ = apply_checked(ISS(keep=keep), model)
    first, second = out.lstm_layers
    assert first.hidden_size == second.hidden_size == hidden
    assert first.directions[0].W.shape == (4 * hidden, 16)
    assert second.directions[0].W.shape == (4 * hidden, hidden)
    assert second.directions[0].R.shape == (4 * hidden, hidden)
    assert out.layer("dense").W.shape == (model.layer("dense").W.shape[0], hidden)
    assert out.layer("dense").source["changed"] is True


def test_kept_units_have_the_largest_norms():
    model = charlm()
    out = ISS(keep=0.5, layers="lstm_1").apply(model)
    layer = model.layer("lstm_1")
    d = layer.directions[0]
    dense = model.layer("dense").W.values
    energy = group_energy(d.W.values, d.R.values, d.b, [dense])
    kept = out.layer("lstm_1").source["iss_kept"][0]
    dropped = np.setdiff1d(np.arange(128), kept)
    assert energy[kept].min() >= energy[dropped].max()
    # The kept rows and columns are exactly the original ones.
    rows = gate_rows(kept, 128)
    new = out.layer("lstm_1").directions[0]
    np.testing.assert_array_equal(new.W.values, d.W.values[rows])
    np.testing.assert_array_equal(new.R.values, d.R.values[rows][:, kept])
    np.testing.assert_array_equal(out.layer("dense").W.values, dense[:, kept])


def test_consumer_lstm_is_sliced_correctly():
    """The sliced next layer on the smaller h equals the full next layer on h with units at 0."""
    model = charlm()
    x = probe_inputs(model)[0]
    out = ISS(keep=0.5, layers="lstm").apply(model)
    kept = out.layer("lstm").source["iss_kept"][0]
    dead = np.setdiff1d(np.arange(128), kept)
    layer = model.layer("lstm")
    rows = gate_rows(dead, 128)
    W, R, b = (layer.directions[0].W.values.copy(), layer.directions[0].R.values.copy(),
               layer.directions[0].b.copy())
    W[rows], R[rows], R[:, dead], b[rows] = 0, 0, 0, 0
    silenced = dataclasses.replace(layer, directions=[
        dataclasses.replace(layer.directions[0], W=Dense(W), R=Dense(R), b=b)])
    reference = run_stack([silenced, model.layer("lstm_1")], x)
    assert not reference[0][0][..., dead].any()  # the silenced units output exactly 0
    got = run_stack(out.lstm_layers, x)
    np.testing.assert_allclose(got[0][0], reference[0][0][..., kept], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[1][0], reference[1][0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("gate", [Activation("sigmoid"), HARD_SIGMOID_KERAS2])
@pytest.mark.parametrize("directions", [(1, 1), (2, 1)])
def test_unknown_consumer_zeroes_units_exactly(gate, directions):
    model = stack_model(known=False, gate=gate, directions=directions)
    before = snapshot(model)
    x = probe_inputs(model)[0]
    out = ISS(keep=0.5, lam=0.05).apply(model)
    assert_unchanged(model, before)
    for layer, layer0 in zip(out.lstm_layers, model.lstm_layers):
        assert layer.hidden_size == layer0.hidden_size
        assert layer.nbytes == layer0.nbytes  # zeroed units are still stored densely
        assert any(layer.name in n and "zeroed in place" in n for n in out.notes)
    results = run_stack(out.lstm_layers, x)
    for layer, (y, h, c) in zip(out.lstm_layers, results):
        hidden = layer.hidden_size
        for d, dead in enumerate(layer.source["iss_zeroed"]):
            assert len(dead) == hidden // 2
            assert np.all(y[..., d * hidden + np.asarray(dead)] == 0.0)  # h_k exactly 0
            assert np.all(c[d][:, dead] == 0.0)
    assert_contract(model, out, x)


def test_weights_only_fixture_is_zeroed_in_place():
    path = FIXTURES / "keras2_charlm_weights.h5"
    if not path.exists():
        pytest.skip("fixture not generated yet")
    out, _ = apply_checked(ISS(keep=0.75), rnnshrink.read(path))
    assert [layer.hidden_size for layer in out.lstm_layers] == [128, 128]
    assert sum("zeroed in place" in n for n in out.notes) == 2


def test_zeroing_refuses_an_activation_nonzero_at_zero():
    model = stack_model(known=False)
    layer = dataclasses.replace(model.layer("lstm_1"), cell_activation=Activation("sigmoid"))
    model = model.replace_layer("lstm_1", layer)
    with pytest.raises(OptionError, match="lstm_1.*sigmoid"):
        ISS(keep=0.5, layers="lstm_1").apply(model)


def test_large_lam_removes_zeroed_groups_and_shrinks_the_rest():
    model = stack_model(sizes=(6, 10, 8))
    layer = model.layer("lstm_0")
    d = layer.directions[0]
    consumer = [part.W.values[:, :10] for part in model.layer("lstm_1").directions]
    norms = group_norms(group_energy(d.W.values, d.R.values, d.b, consumer))
    lam = float(np.sort(norms)[3]) + 1e-9  # zeroes the 4 smallest groups
    out = ISS(lam=lam, layers="lstm_0").apply(model)
    kept = out.layer("lstm_0").source["iss_kept"][0]
    np.testing.assert_array_equal(kept, np.sort(np.argsort(-norms)[:6]))
    W, R, b, _ = shrink_groups(d.W.values, d.R.values, d.b, consumer, proximal_factors(norms, lam))
    rows = gate_rows(kept, 10)
    np.testing.assert_allclose(out.layer("lstm_0").directions[0].W.values, W[rows], rtol=1e-6)
    np.testing.assert_allclose(out.layer("lstm_0").directions[0].b, b[rows], rtol=1e-6)


def test_keeps_none_is_refused():
    with pytest.raises(OptionError, match="would keep none of its 10 units"):
        ISS(threshold=1e6).apply(stack_model())


def test_applying_twice_composes_kept_indices():
    model = charlm()
    once = ISS(keep=0.5, layers="lstm_1").apply(model)
    twice = ISS(keep=0.5, layers="lstm_1").apply(once)
    first = once.layer("lstm_1").source["iss_kept"][0]
    second = twice.layer("lstm_1").source["iss_kept"][0]
    assert len(second) == 32 and set(second) <= set(first)


def test_refuses_a_projection():
    with pytest.raises(OptionError, match="lstm_1 has a projection"):
        ISS(keep=0.5).apply(stack_model(proj=4))


def test_refuses_non_dense_weights():
    model = MagnitudePrune(sparsity=0.9).apply(stack_model())
    with pytest.raises(OptionError, match="iss needs dense weights.*sparse"):
        ISS(keep=0.5).apply(model)


@pytest.mark.parametrize("params, message", [
    (dict(), "at least one of lam > 0, keep, threshold"),
    (dict(keep=0.0), r"keep must be in \(0, 1\], got 0.0"),
    (dict(keep=1.5), r"keep must be in \[0.0, 1.0\], got 1.5"),
    (dict(lam=-1.0), r"lam must be in \[0.0, inf\], got -1.0"),
])
def test_bad_parameters(params, message):
    with pytest.raises(OptionError, match=message):
        ISS(**params)


def test_unknown_layer():
    with pytest.raises(OptionError, match="lstm_0, lstm_1"):
        ISS(keep=0.5, layers="nope").apply(stack_model())


@pytest.mark.parametrize("name", ["keras2_charlm.h5", "charlm.pt", "charlm.onnx"])
def test_contract_across_formats(name):
    out, _ = apply_checked(ISS(keep=0.5, lam=0.01), charlm(name))
    # A layer with a known consumer shrinks; the last layer of the .pt file (head unknown) keeps
    # its width with half its units zeroed.
    widths = [layer.hidden_size for layer in out.lstm_layers]
    assert widths == ([64, 128] if name == "charlm.pt" else [64, 64])


# --- data-aware unit choice and refit ------------------------------------------------------

def test_data_refit_with_white_data_is_slicing_and_least_squares_otherwise():
    rng = np.random.default_rng(5)
    K, units = rng.normal(size=(9, 8)), np.array([0, 2, 3, 7])
    np.testing.assert_allclose(refit_on_data(K, np.eye(8)[units], np.eye(8)), K[:, units],
                               atol=1e-12)
    m = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    fitted = refit_on_data(K, np.eye(8)[units], m.T @ m / len(m))
    best = np.linalg.lstsq(m[:, units], m @ K.T, rcond=None)[0].T
    np.testing.assert_allclose(fitted, best, rtol=1e-6, atol=1e-9)


def test_data_units_with_white_data_keep_the_largest_reader_columns():
    K = np.random.default_rng(6).normal(size=(5, 10)) * np.arange(1, 11)
    largest = np.sort(np.argsort(-np.linalg.norm(K, axis=0))[:4])
    np.testing.assert_array_equal(data_units(K, np.eye(10), 4), largest)


def test_data_units_remove_a_unit_that_copies_another():
    # unit 2 always equals unit 0: removing it costs nothing once unit 0's reader takes over
    rng = np.random.default_rng(7)
    m = rng.normal(size=(300, 4)) * [1.0, 0.5, 1.0, 0.7]
    m[:, 2] = m[:, 0]
    K = rng.normal(size=(6, 4))
    kept = data_units(K, m.T @ m / len(m), 3)
    assert len(set(kept.tolist()) & {0, 2}) == 1


def test_data_variant_beats_the_plain_one_at_equal_size_on_the_trained_char_lm():
    model = charlm("keras2_charlm.h5")
    x = probe_inputs(model)[0]
    plain = ISS(keep=0.75).apply(model)
    data = ISS(keep=0.75, data=True).apply(model, Context(inputs=x))
    assert [l.nbytes for l in data.lstm_layers] == [l.nbytes for l in plain.lstm_layers]
    assert (compare(model, data, x)["output_rel_error"]
            < 0.8 * compare(model, plain, x)["output_rel_error"])


def test_data_variant_with_unknown_consumer_keeps_the_most_active_units():
    model = stack_model(sizes=(6, 20, 16), known=False)
    x = probe_inputs(model)[0]
    out = ISS(keep=0.5, data=True, layers="lstm_1").apply(model, Context(inputs=x))
    y = run_stack(model.lstm_layers, x)[-1][0]
    energy = (y.reshape(-1, 16) ** 2).mean(axis=0)
    zeroed = out.layer("lstm_1").source["iss_zeroed"][0]
    assert sorted(zeroed) == sorted(np.argsort(energy)[:8].tolist())


def test_data_variant_needs_calibration_inputs():
    with pytest.raises(OptionError, match="iss: data=true needs calibration inputs"):
        ISS(keep=0.5, data=True).apply(stack_model())
