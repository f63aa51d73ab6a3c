"""The ONNX reader: fixtures against their expected outputs, hand-built nodes against
onnxruntime (the operator-spec oracle, see shared methods §7), topology, and refusals."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rnnshrink.errors import InputError
from rnnshrink.io import onnx_graph
from rnnshrink.model import DenseLayer, run_layer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TOLERANCE = 1e-5
STEMS = ["charlm", "onnx_bidir", "onnx_nofold", "onnx_handmade_if", "onnx_external", "onnx_attrs",
         "onnx_layout1"]


def fixture(name):
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {name} not generated yet")
    return path


def random_weights(rng, dirs, hidden, size, scale=0.6, bias=True):
    """ONNX-layout W (dirs, 4H, D), R (dirs, 4H, H), B (dirs, 8H) or None."""
    W = rng.uniform(-scale, scale, (dirs, 4 * hidden, size)).astype(np.float32)
    R = rng.uniform(-scale, scale, (dirs, 4 * hidden, hidden)).astype(np.float32)
    B = rng.uniform(-scale, scale, (dirs, 8 * hidden)).astype(np.float32) if bias else None
    return W, R, B


def lstm_model(W, R, B=None, initial_state=False, name="lstm", extra_inputs=(), **attrs):
    """A one-LSTM-node model: graph input X (T, N, D) [+ initial_h, initial_c] -> Y, Y_h, Y_c."""
    dirs, hidden4, size = W.shape
    hidden = hidden4 // 4
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    if B is not None:
        inits.append(numpy_helper.from_array(B, "B"))
    inputs = ["X", "W", "R", "B" if B is not None else ""]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", size])]
    if initial_state:
        inputs += ["", "initial_h", "initial_c"]
        graph_inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [dirs, "N", hidden])
                         for n in ("initial_h", "initial_c")]
    inputs += list(extra_inputs)
    attrs = {"hidden_size": hidden, **attrs}
    node = helper.make_node("LSTM", inputs, ["Y", "Y_h", "Y_c"], name=name, **attrs)
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h", "Y_c")]
    graph = helper.make_graph([node], "g", graph_inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def save(model, path):
    onnx.save_model(model, path)
    return path


def ort_outputs(path, feeds):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def to_batch_first(Y):
    """ONNX Y (T, dirs, N, H) -> (N, T, dirs * H)."""
    steps, dirs, batch, hidden = Y.shape
    return Y.transpose(2, 0, 1, 3).reshape(batch, steps, dirs * hidden)


def max_error(got, want):
    return max(float(np.abs(np.asarray(g) - w).max()) for g, w in zip(got, want))


@pytest.mark.parametrize("stem", STEMS)
def test_fixture_matches_expected(stem):
    model = onnx_graph.read(fixture(f"{stem}.onnx"))
    expected = np.load(fixture(f"expected/{stem}.npz"))
    layers = json.loads(fixture(f"expected/{stem}.json").read_text())["layers"]
    keys = {entry.get("names_by_file", {}).get(f"{stem}.onnx", entry["name"]): entry["key"]
            for entry in layers}
    assert sorted(layer.name for layer in model.lstm_layers) == sorted(keys)
    assert model.topology == "known" and model.format == "onnx"
    for layer in model.lstm_layers:
        key, feeder = keys[layer.name], layer.inputs[0]
        x = expected[f"y{keys[feeder]}"] if feeder in keys else expected["x"]
        got = run_layer(layer, x)
        want = [expected[f"{part}{key}"] for part in "yhc"]
        assert max_error(got, want) < TOLERANCE, layer.name


def test_charlm_topology_and_dense_head():
    model = onnx_graph.read(fixture("charlm.onnx"))
    first, second = model.lstm_layers
    assert second.inputs == [first.name]
    head = model.layers[-1]
    assert isinstance(head, DenseLayer) and head.inputs == [second.name]
    expected = np.load(fixture("expected/charlm.npz"))
    logits = expected["y1"] @ head.W.materialize().T + head.b
    assert np.abs(logits - expected["logits"]).max() < TOLERANCE
    assert model.producer.startswith("pytorch") and model.meta["opset"]["ai.onnx"] == 17


def test_folded_chains_and_subgraphs():
    nofold = onnx_graph.read(fixture("onnx_nofold.onnx"))
    assert nofold.lstm_layers[1].inputs == [nofold.lstm_layers[0].name]
    assert nofold.lstm_layers[0].source["weights"]["W"]["kind"] == "computed"
    assert not any(name.startswith("lstm.") for name in nofold.tensors)  # owned by the layers
    branches = onnx_graph.read(fixture("onnx_handmade_if.onnx"))
    by_name = {layer.name: layer for layer in branches.lstm_layers}
    assert by_name["lstm_rev"].reverse_only
    assert by_name["lstm_then"].source["subgraph"] == "if_branch.then_branch"
    assert by_name["lstm_else"].inputs == ["lstm_rev"]
    assert list(branches.tensors) == ["axes1"]


def test_nested_subgraphs_and_unnamed_nodes(tmp_path):
    rng = np.random.default_rng(11)
    W, R, B = random_weights(rng, 1, 4, 3)
    value = helper.make_tensor_value_info
    lstm = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=4)  # unnamed
    body = helper.make_graph(
        [lstm, helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
        [value("i", TensorProto.INT64, []), value("c_in", TensorProto.BOOL, [])],
        [value("c_out", TensorProto.BOOL, []), value("Y", TensorProto.FLOAT, None)])
    loop = helper.make_node("Loop", ["", "cond"], ["Ys"], name="loop", body=body)
    branch = helper.make_graph([loop], "else", [], [value("Ys", TensorProto.FLOAT, None)])
    then = helper.make_graph([lstm], "then", [], [value("Y", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["out"], name="if", then_branch=then, else_branch=branch)],
        "g", [value("X", TensorProto.FLOAT, [2, 1, 3]), value("cond", TensorProto.BOOL, [])],
        [value("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")])
    model = onnx_graph.read(save(helper.make_model(graph), tmp_path / "m.onnx"))
    assert [layer.name for layer in model.lstm_layers] == ["LSTM_0", "if.then_branch/LSTM_0"]
    assert model.lstm_layers[0].source["subgraph"] == "if.else_branch/loop.body"
    assert all(layer.inputs == ["X"] for layer in model.lstm_layers)
    assert model.tensors == {}


CASES = {
    "forward": dict(),
    "reverse": dict(direction="reverse"),
    "bidirectional": dict(direction="bidirectional"),
    "clip": dict(direction="bidirectional", clip=0.7),
    "hard_sigmoid": dict(activations=["HardSigmoid", "Tanh", "Tanh"], activation_alpha=[0.3],
                         activation_beta=[0.6]),
    "alpha_beta_order": dict(activations=["HardSigmoid", "ScaledTanh", "LeakyRelu"],
                             activation_alpha=[0.25, 0.8, 0.1], activation_beta=[0.55, 1.3]),
    "other_activations": dict(activations=["Sigmoid", "Softsign", "Elu"] * 2,
                              direction="bidirectional"),
    "initial_state": dict(direction="bidirectional", initial_state=True),
    "no_bias": dict(bias=False),
}


@pytest.mark.parametrize("case", CASES)
def test_hand_built_node_matches_onnxruntime(case, tmp_path):
    attrs = dict(CASES[case])
    initial, bias = attrs.pop("initial_state", False), attrs.pop("bias", True)
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    rng = np.random.default_rng(len(case))
    W, R, B = random_weights(rng, dirs, 5, 3, scale=1.2, bias=bias)
    path = save(lstm_model(W, R, B, initial_state=initial, **attrs), tmp_path / "m.onnx")
    x = rng.normal(0, 2, (4, 6, 3)).astype(np.float32)  # (N, T, D)
    feeds = {"X": x.transpose(1, 0, 2).copy()}
    state = None
    if initial:
        state = [rng.normal(0, 0.5, (dirs, 4, 5)).astype(np.float32) for _ in range(2)]
        feeds.update(initial_h=state[0], initial_c=state[1])
    Y, Y_h, Y_c = ort_outputs(path, feeds)
    layer = onnx_graph.read(path).lstm_layers[0]
    assert max_error(run_layer(layer, x, state), [to_batch_first(Y), Y_h, Y_c]) < TOLERANCE


def test_names_states_and_tensors_kept_byte_exact(tmp_path):
    rng = np.random.default_rng(1)
    W, R, B = random_weights(rng, 1, 4, 3)
    model = lstm_model(W, R, B, name="", initial_state=True)
    extra = helper.make_tensor("scale", TensorProto.BFLOAT16, [2], [1.5, -2.0])
    model.graph.initializer.append(extra)
    model.graph.node.append(helper.make_node("Cast", ["scale"], ["scale32"], to=TensorProto.FLOAT))
    model.graph.output.append(helper.make_tensor_value_info("scale32", TensorProto.FLOAT, [2]))
    read = onnx_graph.read(save(model, tmp_path / "m.onnx"))
    layer = read.lstm_layers[0]
    assert layer.name == "LSTM_0" and layer.inputs == ["X"]
    assert layer.source["initial_h"] == "initial_h"
    assert layer.source["constant_initial_state"] == {"initial_h": False, "initial_c": False}
    assert list(read.tensors) == ["scale"]
    tensor = read.tensors["scale"]
    assert tensor.dtype == "bfloat16" and tensor.data.tobytes() == numpy_helper.to_array(
        extra).view(np.uint16).tobytes()


def test_layout_recorded_and_zero_peepholes_accepted(tmp_path):
    rng = np.random.default_rng(2)
    W, R, B = random_weights(rng, 1, 4, 3)
    model = lstm_model(W, R, B, layout=0, extra_inputs=["", "", "", "P"])
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 12), np.float32), "P"))
    read = onnx_graph.read(save(model, tmp_path / "m.onnx"))
    assert read.lstm_layers[0].source["layout"] == 0
    assert any("peephole" in note for note in read.notes)
    assert "P" in read.tensors  # not owned: the writer leaves it untouched


def refused(tmp_path, model, match):
    path = save(model, tmp_path / "bad.onnx")
    with pytest.raises(InputError, match=match):
        onnx_graph.read(path)


def test_refuses_input_forget_and_peepholes(tmp_path):
    rng = np.random.default_rng(3)
    W, R, B = random_weights(rng, 1, 4, 3)
    refused(tmp_path, lstm_model(W, R, B, name="enc", input_forget=1), "'enc'.*input_forget")
    model = lstm_model(W, R, B, name="enc", extra_inputs=["", "", "", "P"])
    model.graph.initializer.append(numpy_helper.from_array(np.ones((1, 12), np.float32), "P"))
    refused(tmp_path, model, "'enc'.*peephole")


def test_refuses_unsupported_attributes_and_inputs(tmp_path):
    rng = np.random.default_rng(4)
    W, R, B = random_weights(rng, 2, 4, 3)
    refused(tmp_path, lstm_model(W, R, B, direction="bidirectional",
                                 activations=["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Tanh", "Tanh"]),
            "different activations")
    refused(tmp_path, lstm_model(W[:1], R[:1], B[:1], activations=["Gelu", "Tanh", "Tanh"]),
            "unsupported activation 'Gelu'")
    model = lstm_model(W[:1], R[:1], B[:1])
    del model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [1, 16, 3]))
    refused(tmp_path, model, "input W is not a constant")
    refused(tmp_path, lstm_model(W[:1], R[:1], B[:1], hidden_size=5), "W has shape .* expected")


@pytest.mark.parametrize("stem", ["onnx_unrolled", "onnx_lstmcell"])
def test_unrolled_recurrence_named(stem):
    with pytest.raises(InputError, match="unrolled into MatMul/Gemm"):
        onnx_graph.read(fixture(f"{stem}.onnx"))


def test_no_lstm_node(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    refused(tmp_path, helper.make_model(graph), "no LSTM node in the graph$")


def test_refuses_truncated_and_foreign_files(tmp_path):
    rng = np.random.default_rng(5)
    data = lstm_model(*random_weights(rng, 1, 8, 6)).SerializeToString()
    for name, content in (("cut.onnx", data[: len(data) // 2]), ("text.onnx", b"hello world\n")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match="ONNX model"):
            onnx_graph.read(tmp_path / name)


def external_model(folder, location, offset=0, length=None):
    """A model whose W lives in external data at ``location``; the bytes are written beside it."""
    rng = np.random.default_rng(6)
    W, R, B = random_weights(rng, 1, 4, 3)
    model = lstm_model(W, R, B)
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length or W.nbytes)):
        tensor.external_data.add(key=key, value=str(value))
    folder.mkdir(parents=True, exist_ok=True)
    return save(model, folder / "m.onnx"), W


def test_external_data_inside_the_folder(tmp_path):
    path, W = external_model(tmp_path / "model", "data/w.bin", offset=8)
    (tmp_path / "model" / "data").mkdir()
    (tmp_path / "model" / "data" / "w.bin").write_bytes(b"\0" * 8 + W.tobytes())
    layer = onnx_graph.read(path).lstm_layers[0]
    assert layer.source["weights"]["W"]["name"] == "W"
    assert layer.directions[0].W.shape == (16, 3)
