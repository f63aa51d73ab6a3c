"""The ONNX drop-in writer: unchanged round trips give the original outputs in onnxruntime,
changed weights reach the file in ONNX order, and what a node cannot hold is refused."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator
from test_onnx_graph import (
    TOLERANCE,
    fixture,
    lstm_model,
    max_error,
    ort_outputs,
    random_weights,
    save,
    to_batch_first,
)

from rnnshrink.errors import OptionError
from rnnshrink.io import onnx_graph, onnx_writer
from rnnshrink.io.gates import to_canonical
from rnnshrink.model import Dense, LSTMDirection, Model, Tensor, run_layer

ROUND_TRIP = ["charlm", "onnx_bidir", "onnx_nofold", "onnx_handmade_if", "onnx_external",
              "onnx_attrs"]


def fixture_feeds(stem, path, cond=True):
    """Graph inputs from the expected file: token ids, x (time-major where the graph is), cond."""
    expected = np.load(fixture(f"expected/{stem}.npz"))
    feeds = {}
    for value in onnx.load(path, load_external_data=False).graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.elem_type == TensorProto.BOOL:
            feeds[value.name] = np.array(cond)
        elif value.type.tensor_type.elem_type == TensorProto.INT64:
            feeds[value.name] = expected["tokens"]
        else:
            time_major = dims[0].dim_param == "T"
            feeds[value.name] = expected["x"].transpose(1, 0, 2).copy() if time_major else expected["x"]
    return feeds


def run_first(model, x):
    return run_layer(model.lstm_layers[0], x)


def passes_full_check(model):
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError:
        return False
    return True


def rescale(model, seed=0):
    """Change every LSTM weight a little (W, R scaled, b shifted), in place."""
    rng = np.random.default_rng(seed)
    for layer in model.lstm_layers:
        for direction in layer.directions:
            direction.W = Dense(direction.W.materialize(np.float32) * 0.9)
            direction.R = Dense(direction.R.materialize(np.float32) * 1.1)
            direction.b = direction.b + rng.uniform(-0.1, 0.1, direction.b.shape)


@pytest.mark.parametrize("stem", ROUND_TRIP)
def test_unchanged_round_trip_gives_original_outputs(stem, tmp_path):
    source = fixture(f"{stem}.onnx")
    output = tmp_path / "out.onnx"
    onnx_writer.write(onnx_graph.read(source), output)
    for cond in (True, False):
        feeds = fixture_feeds(stem, source, cond)
        assert max_error(ort_outputs(output, feeds), ort_outputs(source, feeds)) == 0.0
    written = onnx.load(output)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in written.graph.initializer)
    before = {t.name: onnx.numpy_helper.to_array(t).tobytes()
              for g in onnx_graph.graphs(onnx.load(source).graph) for t in g.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t).tobytes()
             for g in onnx_graph.graphs(written.graph) for t in g.initializer}
    kept = after.keys() & before.keys()  # computed / Constant weights become new initializers
    assert {n: after[n] for n in kept} == {n: before[n] for n in kept}
    assert kept == before.keys() or stem in ("onnx_nofold", "onnx_handmade_if")
    if passes_full_check(onnx.load(source)):
        assert passes_full_check(written)


def test_layout1_round_trip_with_reference_evaluator(tmp_path):
    source = fixture("onnx_layout1.onnx")
    model = onnx_graph.read(source)
    rescale(model)
    onnx_writer.write(model, tmp_path / "out.onnx")
    x = np.load(fixture("expected/onnx_layout1.npz"))["x"]
    Y, Y_h, Y_c = ReferenceEvaluator(str(tmp_path / "out.onnx")).run(None, {"X": x})
    batch, steps, dirs, hidden = Y.shape
    want = [Y.reshape(batch, steps, dirs * hidden), Y_h.transpose(1, 0, 2), Y_c.transpose(1, 0, 2)]
    assert max_error(run_first(model, x), want) < TOLERANCE


@pytest.mark.parametrize("stem", ["onnx_bidir", "onnx_attrs", "onnx_external"])
def test_changed_weights_reach_onnxruntime(stem, tmp_path):
    model = onnx_graph.read(fixture(f"{stem}.onnx"))
    rescale(model)
    onnx_writer.write(model, tmp_path / "out.onnx")
    x = np.load(fixture(f"expected/{stem}.npz"))["x"]
    Y, Y_h, Y_c = ort_outputs(tmp_path / "out.onnx", {"X": x.transpose(1, 0, 2).copy()})
    y = to_batch_first(Y) if Y.ndim == 4 else Y.transpose(1, 0, 2)  # torch export: (T, N, 2H)
    assert max_error(run_first(model, x), [y, Y_h, Y_c]) < TOLERANCE


@pytest.mark.parametrize("stem", ["onnx_nofold", "onnx_handmade_if"])
def test_computed_and_constant_weights_replaced(stem, tmp_path):
    model = onnx_graph.read(fixture(f"{stem}.onnx"))
    rescale(model)
    onnx_writer.write(model, tmp_path / "out.onnx")
    back = onnx_graph.read(tmp_path / "out.onnx")
    for old, new in zip(model.lstm_layers, back.lstm_layers):
        for a, b in zip(old.directions, new.directions):
            assert np.array_equal(a.W.materialize(np.float32), b.W.materialize(np.float32))
            assert np.abs(a.b - b.b).max() < 1e-6
    written = onnx.load(tmp_path / "out.onnx")
    ops = [node.op_type for g in onnx_graph.graphs(written.graph) for node in g.node]
    names = {t.name for g in onnx_graph.graphs(written.graph) for t in g.initializer}
    if stem == "onnx_nofold":  # the Slice/Concat chains and torch-layout initializers are gone
        assert not any(name.startswith("lstm.") for name in names)
        assert len(ops) < len(onnx.load(fixture(f"{stem}.onnx")).graph.node)
    else:  # the else branch's Constant nodes became one initializer each
        assert "Constant" not in ops and "lstm_else_W_rnnshrink" in names


def test_shared_initializer_is_split_and_pruned(tmp_path):
    rng = np.random.default_rng(7)
    W, R, B = random_weights(rng, 1, 4, 3)
    proto = lstm_model(W, R, B, name="a")
    second = onnx.helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y2"], name="b", hidden_size=4)
    proto.graph.node.append(second)
    proto.graph.output.append(onnx.helper.make_tensor_value_info("Y2", TensorProto.FLOAT, None))
    model = onnx_graph.read(save(proto, tmp_path / "in.onnx"))
    first = model.lstm_layers[0].directions[0]
    first.W = Dense(first.W.materialize(np.float32) * 2)
    onnx_writer.write(model, tmp_path / "out.onnx")
    written = onnx.load(tmp_path / "out.onnx")
    assert sorted(t.name for t in written.graph.initializer) == sorted(
        f"{n}_{r}_rnnshrink" for n in "ab" for r in "WRB")
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    outputs = ort_outputs(tmp_path / "out.onnx", {"X": x.transpose(1, 0, 2).copy()})
    back = onnx_graph.read(tmp_path / "out.onnx")
    unchanged = back.lstm_layers[1].directions[0].W.materialize(np.float32)
    assert np.array_equal(unchanged, to_canonical(W[0], "onnx"))
    assert max_error([run_first(model, x)[0]], [to_batch_first(outputs[0])]) < TOLERANCE


def test_bias_added_when_the_node_had_none(tmp_path):
    rng = np.random.default_rng(8)
    W, R, _ = random_weights(rng, 1, 4, 3, bias=False)
    model = onnx_graph.read(save(lstm_model(W, R), tmp_path / "in.onnx"))
    model.lstm_layers[0].directions[0].b = rng.uniform(-1, 1, 16)
    onnx_writer.write(model, tmp_path / "out.onnx")
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    Y, Y_h, Y_c = ort_outputs(tmp_path / "out.onnx", {"X": x.transpose(1, 0, 2).copy()})
    assert max_error(run_first(model, x), [to_batch_first(Y), Y_h, Y_c]) < TOLERANCE


def test_float16_weights_keep_their_dtype(tmp_path):
    rng = np.random.default_rng(9)
    W, R, B = (a.astype(np.float16) for a in random_weights(rng, 1, 4, 3))
    model = onnx_graph.read(save(lstm_model(W, R, B), tmp_path / "in.onnx"))
    assert model.lstm_layers[0].directions[0].W.stored_dtype == "float16"
    rescale(model)
    onnx_writer.write(model, tmp_path / "out.onnx")
    types = {t.name: t.data_type for t in onnx.load(tmp_path / "out.onnx").graph.initializer}
    assert types == {"W": TensorProto.FLOAT16, "R": TensorProto.FLOAT16, "B": TensorProto.FLOAT16}


def test_beyond_the_protobuf_limit_writes_a_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_writer, "_INLINE_LIMIT", 0)
    source = fixture("onnx_bidir.onnx")
    onnx_writer.write(onnx_graph.read(source), tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size > 0
    feeds = fixture_feeds("onnx_bidir", source)
    assert max_error(ort_outputs(tmp_path / "big.onnx", feeds), ort_outputs(source, feeds)) == 0.0


def refused_write(model, path, match):
    with pytest.raises(OptionError, match=match):
        onnx_writer.write(model, path)
    assert not path.exists()


def test_refuses_what_an_onnx_node_cannot_hold(tmp_path):
    rng = np.random.default_rng(10)
    W, R, B = random_weights(rng, 1, 4, 3)
    path = save(lstm_model(W, R, B), tmp_path / "in.onnx")
    output = tmp_path / "out.onnx"
    model = onnx_graph.read(path)
    direction = model.lstm_layers[0].directions[0]
    model.lstm_layers[0].directions[0] = LSTMDirection(
        W=direction.W, R=rng.normal(size=(16, 2)), b=direction.b, proj=rng.normal(size=(2, 4)))
    refused_write(model, output, "projection")
    model = onnx_graph.read(path)
    model.lstm_layers[0].directions[0] = LSTMDirection(
        W=rng.normal(size=(12, 3)), R=rng.normal(size=(12, 3)), b=np.zeros(12))
    refused_write(model, output, r"W is \(1, 12, 3\), the ONNX graph needs \(1, 16, 3\)")
    model = onnx_graph.read(path)
    model.lstm_layers[0].clip = 2.0
    refused_write(model, output, "activations or clip changed")
    refused_write(Model(model.layers), output, "read from an ONNX file")


def test_changed_pass_through_tensor_is_written(tmp_path):
    source = fixture("charlm.onnx")
    model = onnx_graph.read(source)
    head = model.layers[-1]
    assert head.source["layout"] == dict(zip(head.source["tensors"], "Wb"))
    name = head.source["tensors"][0]
    stored = model.tensors[name]
    model.tensors[name] = Tensor(name, stored.data * np.float32(0.5), stored.dtype)
    onnx_writer.write(model, tmp_path / "out.onnx")
    feeds = fixture_feeds("charlm", source)
    (logits,) = ort_outputs(tmp_path / "out.onnx", feeds)
    expected = np.load(fixture("expected/charlm.npz"))
    halved = expected["y1"] @ (0.5 * head.W.materialize().T) + head.b
    assert np.abs(logits - halved).max() < TOLERANCE
    model.tensors[name] = Tensor(name, stored.data[:1], stored.dtype)
    refused_write(model, tmp_path / "bad.onnx", "cannot replace")
