"""BPTT through the reference forward pass against torch autograd, per sequence, in float64."""

import numpy as np
import pytest

from rnnshrink.errors import OptionError
from rnnshrink.model import Activation, Dense, DenseLayer
from rnnshrink.model.activations import SUPPORTED
from rnnshrink.model.backward import derivative, stack_backward, stack_forward

from _models import FIXTURES, model_of, stack_model


def random_head(width, classes=5, seed=3):
    rng = np.random.default_rng(seed)
    return DenseLayer("head", Dense(rng.normal(0, 0.5, (classes, width))), rng.normal(0, 0.1, classes))


def charlm_case():
    model = model_of("charlm.pt")
    table = model.tensors["embed.weight"].data
    head = DenseLayer("head", Dense(model.tensors["head.weight"].data), model.tensors["head.bias"].data)
    tokens = np.load(FIXTURES / "charlm_data.npz")["valid_tokens"][:60].reshape(3, 20)
    return model.lstm_layers, head, tokens, table


def ours(layers, head, x, labels):
    tape = stack_forward(layers, x, head)
    return stack_backward(tape, labels)


def relative(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b))


def assert_matches(grads, dx, reference):
    """``reference``: per sequence, (dict key -> torch gradient, input gradient)."""
    for n, (expected, dx_n) in enumerate(reference):
        assert set(expected) == set(grads)
        for key, value in expected.items():
            assert relative(grads[key][n], value) <= 1e-8, (key, n)
        assert relative(dx[n], dx_n) <= 1e-8


def torch_reference(layers, head, x, labels, nn_lstm=True):
    """Per-sequence gradients from torch autograd: ``nn.LSTM`` layers (sigmoid gates) or, for
    activations torch's LSTM does not have, the equations written with torch operations."""
    import torch

    found = []
    for n in range(len(x)):
        params, seq = {}, torch.tensor(x[n:n + 1], requires_grad=True)
        out = seq
        for layer in layers:
            out = (nn_layer if nn_lstm else manual_layer)(layer, out, params)
        W = torch.tensor(head.W.materialize(), requires_grad=True)
        b = torch.tensor(np.asarray(head.b, np.float64), requires_grad=True)
        params[(head.name, 0, "W")], params[(head.name, 0, "b")] = W, b
        logits = out[0] @ W.T + b
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels[n]), reduction="sum")
        keys = list(params)
        values = torch.autograd.grad(loss, [params[k] for k in keys] + [seq])
        found.append(({k: v.numpy() for k, v in zip(keys, values[:-1])}, values[-1][0].numpy()))
    return found


def nn_layer(layer, x, params):
    import torch

    module = torch.nn.LSTM(layer.input_size, layer.hidden_size, batch_first=True,
                           bidirectional=layer.num_directions == 2, proj_size=layer.proj_size,
                           dtype=torch.float64)
    for k, d in enumerate(layer.directions):
        suffix = "_l0" + ("_reverse" if k else "")
        for name, value in (("weight_ih", d.W.materialize()), ("weight_hh", d.R.materialize()),
                            ("bias_ih", d.b), ("bias_hh", np.zeros_like(d.b))) + (
                (("weight_hr", d.proj.materialize()),) if d.proj is not None else ()):
            parameter = getattr(module, name + suffix)
            with torch.no_grad():
                parameter.copy_(torch.tensor(np.asarray(value, np.float64)))
        roles = {"W": "weight_ih", "R": "weight_hh", "b": "bias_ih", "proj": "weight_hr"}
        for role, name in roles.items():
            if role != "proj" or d.proj is not None:
                params[(layer.name, k, role)] = getattr(module, name + suffix)
    return module(x)[0]


def _torch_activation(activation):
    import torch

    if activation.name == "hard_sigmoid":
        # not F.hardsigmoid: its backward scales by 1/6 in float32 (1e-8 relative off)
        return lambda v: torch.clamp(activation.alpha * v + activation.beta, 0, 1)
    return {"sigmoid": torch.sigmoid, "tanh": torch.tanh}[activation.name]


def manual_layer(layer, x, params):
    import torch

    gate, cell, hidden = (_torch_activation(a) for a in
                          (layer.gate_activation, layer.cell_activation, layer.hidden_activation))
    steps, outputs = x.shape[1], []
    for k, d in enumerate(layer.directions):
        W, R, b = (torch.tensor(np.asarray(v, np.float64), requires_grad=True)
                   for v in (d.W.materialize(), d.R.materialize(), d.b))
        params.update({(layer.name, k, "W"): W, (layer.name, k, "R"): R, (layer.name, k, "b"): b})
        h, c, ys = torch.zeros(1, layer.out_size, dtype=torch.float64), 0.0, [None] * steps
        reverse = k == 1 or layer.reverse_only
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            z = x[:, t] @ W.T + h @ R.T + b
            if layer.clip is not None:
                z = torch.clamp(z, -layer.clip, layer.clip)
            zi, zf, zg, zo = z.chunk(4, dim=1)
            c = gate(zf) * c + gate(zi) * cell(zg)
            h = ys[t] = gate(zo) * hidden(c)
        outputs.append(torch.stack(ys, dim=1))
    return torch.cat(outputs, dim=2)


def test_charlm_gradients_match_torch():
    pytest.importorskip("torch")
    layers, head, tokens, table = charlm_case()
    x = table[tokens].astype(np.float64)
    labels = np.roll(tokens, -1, axis=1)
    grads, dx = ours(layers, head, x, labels)
    assert_matches(grads, dx, torch_reference(layers, head, x, labels))
    assert grads[("lstm_l1", 0, "W")].shape == (3, 512, 128) and grads[("head", 0, "W")].shape == (3, 96, 128)


def test_bidirectional_projection_gradients_match_torch():
    pytest.importorskip("torch")
    model = model_of("torch_bidir_proj.pt")
    layers = model.lstm_layers
    rng = np.random.default_rng(1)
    x, head = rng.normal(size=(3, 9, 10)), random_head(layers[-1].output_size)
    labels = rng.integers(0, 5, (3, 9))
    grads, dx = ours(layers, head, x, labels)
    assert_matches(grads, dx, torch_reference(layers, head, x, labels))
    assert grads[("l1", 1, "proj")].shape == (3, 8, 24)


@pytest.mark.parametrize("name", ["keras2_bidir_hardsig.h5", "keras3_bidir_hardsig.h5",
                                  "onnx_attrs.onnx"])
def test_hard_sigmoid_and_clip_gradients_match_torch(name):
    pytest.importorskip("torch")
    layers = model_of(name).lstm_layers
    rng = np.random.default_rng(2)
    # large inputs so the hard sigmoids and the clip saturate somewhere
    x = rng.normal(0, 3, size=(2, 8, layers[0].input_size))
    head, labels = random_head(layers[-1].output_size), rng.integers(0, 5, (2, 8))
    grads, dx = ours(layers, head, x, labels)
    assert_matches(grads, dx, torch_reference(layers, head, x, labels, nn_lstm=False))
    if layers[0].clip is not None:
        tape = stack_forward(layers, x, head)
        assert np.any(np.abs(tape.caches[0][0]["z"]) > layers[0].clip)


def test_gradients_sum_over_sequences_to_the_batch_gradient():
    model = stack_model(sizes=(4, 6, 5), directions=(2, 1))
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(4, 6, 4)), rng.integers(0, 7, (4, 6))
    head = model.layers[-1]
    grads, _ = ours(model.lstm_layers, head, x, labels)
    for n in range(4):
        single, _ = ours(model.lstm_layers, head, x[n:n + 1], labels[n:n + 1])
        for key, value in single.items():
            np.testing.assert_allclose(grads[key][n], value[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", SUPPORTED)
def test_derivatives_are_the_slopes(name):
    activation = Activation(name)
    x = np.random.default_rng(0).uniform(-3.3, 3.3, 50)
    x = x[np.min(np.abs(x[:, None] - [0.0, 1.0, -2.5, 2.5]), axis=1) > 1e-3]  # off the kinks
    eps = 1e-6
    slope = (activation(x + eps) - activation(x - eps)) / (2 * eps)
    np.testing.assert_allclose(derivative(activation, x), slope, rtol=1e-6, atol=1e-8)


def test_unknown_activation_is_refused():
    class Odd:
        name, alpha, beta = "swish", None, None

        def describe(self):
            return "swish"

    with pytest.raises(OptionError, match="no gradient for activation swish"):
        derivative(Odd(), np.zeros(2))
