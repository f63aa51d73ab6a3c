"""Probes the tool makes itself: text the language model writes, uniform tokens, fallback."""

import dataclasses

import numpy as np
from scipy.special import log_softmax

from rnnshrink.fidelity import probe_inputs
from rnnshrink.model import Activation, Dense, DenseLayer
from rnnshrink.model.network import apply_dense, trace_model
from rnnshrink.probes import (
    chain_problem,
    sample_categorical,
    self_probes,
    softmax_head,
)

from _models import FIXTURES, model_of, stack_model


def bits_per_token(model, table, tokens):
    """Mean ``−log2 p(token_{t+1} | tokens_≤t)`` under the model (the char LM's bits/char)."""
    head = softmax_head(model)
    y = trace_model(model, table[tokens].astype(np.float64))[model.lstm_layers[-1].name][1]
    log_p = log_softmax(apply_dense(head, y), axis=-1)[:, :-1]
    nats = -np.take_along_axis(log_p, tokens[:, 1:, None], axis=-1)
    return float(nats.mean() / np.log(2))


def test_char_lm_writes_text_that_reads_like_real_text():
    model = model_of("charlm.pt")
    table = model.tensors["embed.weight"].data
    probes = self_probes(model, count=32, steps=150, seed=0)
    assert probes.kind == "sampled" and "sampled from the model itself" in probes.description
    np.testing.assert_array_equal(probes.x, table[probes.tokens])
    real = np.load(FIXTURES / "charlm_data.npz")["valid_tokens"][:32 * 150].reshape(32, 150)
    uniform = np.random.default_rng(0).integers(0, len(table), real.shape)
    sampled_bpc, real_bpc = bits_per_token(model, table, probes.tokens), bits_per_token(model, table, real)
    # measured here: sampled 2.44, real held-out text 2.35, uniform tokens 10.8 bits/char
    assert 0.75 * real_bpc < sampled_bpc < 1.2 * real_bpc
    assert bits_per_token(model, table, uniform) > 3 * sampled_bpc
    # and the characters come about as often as in real text (total variation distance
    # measured 0.10; uniform tokens 0.66)
    counts = [np.bincount(t.ravel(), minlength=len(table)) / t.size for t in (probes.tokens, real)]
    assert 0.5 * np.abs(counts[0] - counts[1]).sum() < 0.15


def test_probes_are_seeded():
    model = model_of("charlm.pt")
    first, again = self_probes(model, 4, 30, seed=5), self_probes(model, 4, 30, seed=5)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert first.description == again.description
    other = self_probes(model, 4, 30, seed=6)
    assert np.mean(other.tokens != first.tokens) > 0.5


def test_keras_char_lm_is_sampled_too():
    probes = self_probes(model_of("keras2_charlm.h5"), 3, 10)
    assert probes.kind == "sampled" and probes.tokens.shape == (3, 10)


def test_tagger_gets_uniform_tokens():
    # head size != vocabulary: a tagger / classifier
    model = stack_model(vocab=7)
    tagger = model.replace_layer("dense", DenseLayer(
        "dense", Dense(np.ones((3, 8))), np.zeros(3), inputs=["lstm_1"]))
    bidirectional = stack_model(directions=(2, 1), vocab=7)
    for model in (tagger, bidirectional):
        probes = self_probes(model, 200, 50, seed=1)
        assert probes.kind == "uniform" and "7-token input alphabet of embedding" in probes.description
        np.testing.assert_array_equal(probes.x, model.layer("embedding").table[probes.tokens])
        counts = np.bincount(probes.tokens.ravel(), minlength=7)
        assert counts.min() > 0.9 * counts.mean()  # 10 000 draws per token


def test_small_language_model_is_sampled():
    assert self_probes(stack_model(vocab=7), 2, 5).kind == "sampled"


def test_model_without_embedding_falls_back():
    model = model_of("keras2_bidir_hardsig.h5")
    probes = self_probes(model, 6, 20, seed=2)
    expected, description = probe_inputs(model, batch=6, steps=20, seed=2)
    assert probes.kind == "fallback" and probes.tokens is None
    np.testing.assert_array_equal(probes.x, expected)
    assert probes.description == f"{description} (no embedding feeds the first LSTM)"


def test_softmax_head_found_in_state_dicts_and_graphs():
    torch_head = softmax_head(model_of("charlm.pt"))
    state = model_of("charlm.pt").tensors
    np.testing.assert_array_equal(torch_head.W.materialize(), state["head.weight"].data)
    np.testing.assert_array_equal(torch_head.b, state["head.bias"].data)
    assert softmax_head(model_of("keras2_charlm.h5")).name == "dense"
    assert softmax_head(model_of("torch_bidir_proj.pt")) is None


def test_dense_with_another_activation_is_not_a_softmax_head():
    model = stack_model()
    dense = model.layer("dense")
    sigmoid = dataclasses.replace(dense, activation=Activation("sigmoid"))
    softmax = dataclasses.replace(dense, activation=None, source={"activation": "softmax"})
    assert softmax_head(model.replace_layer("dense", sigmoid)) is None
    assert softmax_head(model.replace_layer("dense", softmax)) is softmax


def test_chain_problem_names_the_break():
    model = stack_model()
    assert chain_problem(model) is None
    second = dataclasses.replace(model.layer("lstm_1"), inputs=["embedding"])
    assert chain_problem(model.replace_layer("lstm_1", second)) == \
        "LSTM layer lstm_1 is not fed by lstm_0"


def test_sample_categorical_follows_the_distribution():
    p = np.array([[0.1, 0.6, 0.3]] * 20000)
    draws = sample_categorical(p, np.random.default_rng(0))
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / len(draws), p[0], atol=0.01)
