"""Sensitivities rms / hessian / fisher, second moments for GPTQ, tempering, output KL."""

import dataclasses

import numpy as np
import pytest
from scipy.special import softmax

from rnnshrink.errors import OptionError
from rnnshrink.fidelity import CalibrationInputs
from rnnshrink.model import Dense
from rnnshrink.model.forward import run_layer
from rnnshrink.model.network import trace_model
from rnnshrink.probes import Probes, sample_categorical, self_probes
from rnnshrink.sensitivity import (
    available_kinds,
    fisher,
    matrices,
    output_kl,
    second_moments,
    sensitivities,
    strongest,
    temper,
)

from _models import model_of, stack_model


def expected_keys(model):
    return {(layer.name, k, role) for layer in model.lstm_layers
            for k, d in enumerate(layer.directions) for role in d.matrices}


@pytest.mark.parametrize("name", ["charlm.pt", "torch_bidir_proj.pt"])
def test_rms_is_one_over_the_row_mean_square(name):
    model = model_of(name)
    found = sensitivities(model, "rms")
    assert set(found) == expected_keys(model)
    for key, w in found.items():
        W = matrices(model)[key].materialize()
        np.testing.assert_allclose(w, np.broadcast_to(1 / np.mean(W ** 2, axis=1)[:, None], W.shape))


def independent_input_powers(model, x):
    """Per matrix, ``E[v_j²]`` of what it reads, from the traced sequences and the forward
    cache (``m = o ⊙ tanh(c)`` for a projection), with ``h_{-1} = 0``."""
    found = {}
    for layer in model.lstm_layers:
        inputs, y = trace_model(model, x)[layer.name][:2]
        caches = []
        run_layer(layer, inputs, caches=caches)
        out = layer.out_size
        for k in range(layer.num_directions):
            h = y[..., k * out:(k + 1) * out]
            previous = np.zeros_like(h)
            if k == 1:
                previous[:, :-1] = h[:, 1:]
            else:
                previous[:, 1:] = h[:, :-1]
            found[(layer.name, k, "W")] = np.mean(inputs ** 2, axis=(0, 1))
            found[(layer.name, k, "R")] = np.mean(previous ** 2, axis=(0, 1))
            if layer.proj_size:
                z, c = caches[k]["z"], caches[k]["c"]
                m = layer.gate_activation(np.split(z, 4, axis=2)[3]) * np.tanh(c)
                found[(layer.name, k, "proj")] = np.mean(m ** 2, axis=(0, 1))
    return found


@pytest.mark.parametrize("name", ["charlm.pt", "torch_bidir_proj.pt"])
def test_hessian_is_the_input_power_of_each_matrix(name):
    model = model_of(name)
    probes = self_probes(model, 6, 25)
    found = sensitivities(model, "hessian", probes)
    expected = independent_input_powers(model, probes.x)
    assert set(found) == set(expected) == expected_keys(model)
    moments = second_moments(model, probes)
    for key, w in found.items():
        assert w.shape == matrices(model)[key].shape
        np.testing.assert_allclose(w[0], expected[key], rtol=1e-10)
        np.testing.assert_allclose(w[-1], expected[key], rtol=1e-10)
        np.testing.assert_allclose(np.diag(moments[key]), expected[key], rtol=1e-10)


def torch_fisher(model, x, seed):
    """Mean squared per-sequence gradient of the sampled labels' log-likelihood, with torch
    autograd; the labels drawn as :func:`fisher` draws them (one chunk, the same generator)."""
    torch = pytest.importorskip("torch")
    from test_backward import nn_layer, torch_reference

    layers, head = model.lstm_layers, model.layer("dense")
    with torch.no_grad():
        out = torch.tensor(x)
        for layer in layers:
            out = nn_layer(layer, out, {})
        logits = (out @ torch.tensor(head.W.materialize()).T + torch.tensor(head.b, dtype=torch.float64))
    labels = sample_categorical(softmax(logits.numpy(), axis=-1), np.random.default_rng(seed))
    reference = torch_reference(layers, head, x, labels)
    return {key: np.mean([grads[key] ** 2 for grads, _ in reference], axis=0)
            for key in reference[0][0]}


def test_fisher_is_the_mean_squared_sequence_gradient_of_sampled_labels():
    model = stack_model(sizes=(4, 6, 5), directions=(2, 1), vocab=7)
    probes = self_probes(model, 5, 9, seed=1)
    expected = torch_fisher(model, probes.x, seed=3)
    found = fisher(model, probes.x, seed=3)
    assert set(found) == expected_keys(model)
    for key, value in found.items():
        assert np.max(np.abs(value - expected[key])) <= 1e-8 * np.max(expected[key]), key
    floored = sensitivities(model, "fisher", probes, seed=3)
    assert all(np.all(w > 0) and w.shape == found[key].shape for key, w in floored.items())


def test_fisher_of_the_char_lm_covers_every_matrix():
    model = model_of("charlm.pt")
    probes = self_probes(model, 4, 20)
    assert available_kinds(model, probes) == ("rms", "hessian", "fisher")
    assert strongest(model, probes) == "fisher" and strongest(model) == "rms"
    found = sensitivities(model, "fisher", probes)
    assert {key: w.shape for key, w in found.items()} == {
        key: w.shape for key, w in matrices(model).items()}


def test_fisher_needs_a_softmax_head_and_a_chain():
    model = model_of("torch_bidir_proj.pt")
    probes = self_probes(model, 2, 5)
    assert strongest(model, probes) == "hessian"
    with pytest.raises(OptionError, match="needs a Dense softmax head"):
        sensitivities(model, "fisher", probes)
    lm = stack_model()
    given = Probes(CalibrationInputs(probes.x[..., :6], {"lstm_1": np.zeros((2, 5, 10))}), "given")
    with pytest.raises(OptionError, match="cut the chain"):
        sensitivities(lm, "fisher", given)
    with pytest.raises(OptionError, match="sensitivity must be one of rms, hessian, fisher"):
        sensitivities(lm, "diagonal", given)
    with pytest.raises(OptionError, match="hessian needs probe inputs"):
        sensitivities(lm, "hessian")


def test_temper_scales_to_mean_one_over_the_whole_model():
    model = model_of("charlm.pt")
    rms = sensitivities(model, "rms")
    for beta in (0.0, 0.5, 1.0):
        tempered = temper(rms, beta)
        total = sum(w.sum() for w in tempered.values()) / sum(w.size for w in tempered.values())
        assert total == pytest.approx(1.0)
        assert all(0 in w.strides for w in tempered.values())  # still broadcast views
    flat = temper(rms, 0.0)
    assert all(np.allclose(w, 1.0) for w in flat.values())
    kept = temper(rms, 1.0)
    key, other = ("lstm_l0", 0, "W"), ("lstm_l1", 0, "R")
    assert kept[key][0, 0] / kept[other][3, 0] == pytest.approx(rms[key][0, 0] / rms[other][3, 0])
    half = temper(rms, 0.5)
    assert half[key][0, 0] / half[other][3, 0] == pytest.approx(
        np.sqrt(rms[key][0, 0] / rms[other][3, 0]))


def test_output_kl_is_zero_for_the_same_model_and_grows_with_noise():
    model = model_of("charlm.pt")
    probes = self_probes(model, 3, 20, seed=9)
    assert output_kl(model, model, probes) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)

    def noisy(scale):
        layer = model.lstm_layers[1]
        d = layer.directions[0]
        R = d.R.materialize()
        changed = dataclasses.replace(d, R=Dense(R + scale * R.std() * rng.standard_normal(R.shape)))
        return model.replace_layer(layer.name, dataclasses.replace(layer, directions=[changed]))

    small, large = output_kl(model, noisy(0.05), probes), output_kl(model, noisy(0.3), probes)
    assert 0 < small < large
    with pytest.raises(OptionError, match="softmax head"):
        output_kl(model_of("torch_bidir_proj.pt"), model_of("torch_bidir_proj.pt"), probes)
