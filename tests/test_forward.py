"""The reference forward pass against independent implementations (PyTorch, onnxruntime)."""

import numpy as np
import pytest

from rnnshrink.model import (
    HARD_SIGMOID_KERAS2,
    Activation,
    LSTMDirection,
    LSTMLayer,
    run_layer,
    run_stack,
)


def random_layer(rng, input_size, hidden, proj=0, directions=1, name="l", **kwargs):
    out = proj or hidden
    dirs = [
        LSTMDirection(
            W=rng.standard_normal((4 * hidden, input_size)) * 0.3,
            R=rng.standard_normal((4 * hidden, out)) * 0.3,
            b=rng.standard_normal(4 * hidden) * 0.1,
            proj=rng.standard_normal((proj, hidden)) * 0.3 if proj else None,
        )
        for _ in range(directions)
    ]
    return LSTMLayer(name, dirs, **kwargs)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj", [0, 3])
def test_matches_torch_lstm(bidirectional, proj):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 7, num_layers=2, bidirectional=bidirectional, proj_size=proj,
                         batch_first=True)
    state = {k: v.detach().numpy().astype(np.float64) for k, v in lstm.state_dict().items()}
    layers = []
    for k in range(2):
        dirs = []
        for suffix in ["", "_reverse"][: 1 + bidirectional]:
            get = lambda n: state[f"{n}_l{k}{suffix}"]  # noqa: E731
            dirs.append(LSTMDirection(get("weight_ih"), get("weight_hh"),
                                      get("bias_ih") + get("bias_hh"),
                                      proj=get("weight_hr") if proj else None, bias_terms=2))
        layers.append(LSTMLayer(f"l{k}", dirs))
    x = np.random.default_rng(1).standard_normal((3, 9, 5)).astype(np.float32)
    results = run_stack(layers, x)
    y, (h, c) = lstm(torch.from_numpy(x))
    assert np.abs(results[-1][0] - y.detach().numpy()).max() < 1e-5
    assert np.abs(np.concatenate([r[1] for r in results]) - h.detach().numpy()).max() < 1e-5
    assert np.abs(np.concatenate([r[2] for r in results]) - c.detach().numpy()).max() < 1e-5


def _onnx_lstm_outputs(layer, x, h0, c0, direction):
    """Run ``layer`` through onnxruntime's LSTM op (gate order i, o, f, c)."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from rnnshrink.io.gates import from_canonical

    W = np.stack([from_canonical(d.W.materialize(), "onnx") for d in layer.directions])
    R = np.stack([from_canonical(d.R.materialize(), "onnx") for d in layer.directions])
    B = np.stack([np.concatenate([from_canonical(d.b, "onnx"), np.zeros_like(d.b)])
                  for d in layer.directions])
    acts = [layer.gate_activation, layer.cell_activation, layer.hidden_activation]
    onnx_names = {"sigmoid": "Sigmoid", "tanh": "Tanh", "hard_sigmoid": "HardSigmoid", "relu": "Relu"}
    attrs = {"hidden_size": layer.hidden_size, "direction": direction,
             "activations": [onnx_names[a.name] for a in acts] * layer.num_directions}
    # onnxruntime consumes alpha / beta only for the functions that take them, in order
    alphas = [a.alpha for a in acts if a.alpha is not None] * layer.num_directions
    betas = [a.beta for a in acts if a.beta is not None] * layer.num_directions
    if alphas:
        attrs["activation_alpha"], attrs["activation_beta"] = alphas, betas
    if layer.clip is not None:
        attrs["clip"] = layer.clip
    inits = [numpy_helper.from_array(a.astype(np.float32), n)
             for a, n in [(W, "W"), (R, "R"), (B, "B"), (h0, "h0"), (c0, "c0")]]
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "h0", "c0"], ["Y", "Yh", "Yc"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Yh", "Yc")],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": np.transpose(x, (1, 0, 2)).astype(np.float32)})


@pytest.mark.parametrize("direction,clip,gate", [
    ("forward", None, Activation("sigmoid")),
    ("reverse", None, Activation("sigmoid")),
    ("bidirectional", None, Activation("sigmoid")),
    ("forward", 0.5, Activation("sigmoid")),
    ("bidirectional", None, HARD_SIGMOID_KERAS2),
    ("forward", None, Activation("hard_sigmoid", 1 / 6, 0.5)),
])
def test_matches_onnxruntime_lstm(direction, clip, gate):
    rng = np.random.default_rng(2)
    layer = random_layer(rng, 4, 6, directions=2 if direction == "bidirectional" else 1,
                         reverse_only=direction == "reverse", clip=clip, gate_activation=gate)
    x = rng.standard_normal((2, 5, 4))
    h0 = rng.standard_normal((layer.num_directions, 2, 6)) * 0.5
    c0 = rng.standard_normal((layer.num_directions, 2, 6)) * 0.5
    Y, Yh, Yc = _onnx_lstm_outputs(layer, x, h0, c0, direction)
    y, h, c = run_layer(layer, x, initial_state=(h0, c0))
    # ONNX Y is (T, dirs, N, H); ours (N, T, dirs * H)
    expected = np.transpose(Y, (2, 0, 1, 3)).reshape(2, 5, -1)
    assert np.abs(y - expected).max() < 1e-5
    assert np.abs(h - Yh).max() < 1e-5 and np.abs(c - Yc).max() < 1e-5


def test_reverse_direction_equals_forward_on_flipped_sequence():
    rng = np.random.default_rng(3)
    forward = random_layer(rng, 3, 4)
    backward = LSTMLayer("r", forward.directions, reverse_only=True)
    x = rng.standard_normal((2, 6, 3))
    y_forward, h_forward, _ = run_layer(forward, x[:, ::-1])
    y_backward, h_backward, _ = run_layer(backward, x)
    np.testing.assert_allclose(y_backward, y_forward[:, ::-1])
    np.testing.assert_allclose(h_backward, h_forward)


def test_input_width_is_checked():
    layer = random_layer(np.random.default_rng(0), 3, 4)
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, time, 3\)"):
        run_layer(layer, np.zeros((1, 2, 5)))


def test_projection_counts_match_pytorch_parameters():
    torch = pytest.importorskip("torch")
    layer = random_layer(np.random.default_rng(0), 10, 24, proj=8, directions=2)
    layer.directions[0].bias_terms = layer.directions[1].bias_terms = 2
    reference = torch.nn.LSTM(10, 24, bidirectional=True, proj_size=8)
    assert layer.params == sum(p.numel() for p in reference.parameters())
    # per step: W (96x10), R (96x8), proj (8x24) per direction
    assert layer.macs_per_step == 2 * (96 * 10 + 96 * 8 + 8 * 24)
