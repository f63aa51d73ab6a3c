"""The PyTorch checkpoint reader and writer: fixtures against their expected outputs and against
``torch.nn.LSTM``, round trips through ``torch.load(weights_only=True)``, and refusals."""

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from rnnshrink.errors import InputError, OptionError
from rnnshrink.io import read, torch_checkpoint
from rnnshrink.model import Dense, LSTMDirection, LSTMLayer, Model, Tensor, run_layer, run_stack

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TOLERANCE = 1e-5  # float32 outputs; fp16 / bf16 expectations come from the same stored weights
TORCH_FILES = ["charlm.pt", "charlm_legacy.pt", "torch_bidir_proj.pt", "torch_cell.pt",
               "torch_checkpoint.pth", "torch_fp16.pt", "torch_bf16.pt", "torch_fp64.pt"]


def fixture(name):
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {name} not generated yet")
    return path


def expected(name):
    stem = json.loads((FIXTURES / "expected" / "index.json").read_text())[name]
    arrays = np.load(FIXTURES / "expected" / f"{stem}.npz")
    return arrays, json.loads((FIXTURES / "expected" / f"{stem}.json").read_text())


def max_error(model, arrays):
    """Max abs difference of every layer's y, h and c from the expected arrays."""
    results = run_stack(model.lstm_layers, arrays["x"])
    return max(np.abs(found - arrays[f"{kind}{k}"]).max()
               for k, result in enumerate(results) for kind, found in zip("yhc", result))


@pytest.mark.parametrize("name", TORCH_FILES)
def test_fixture_matches_expected_outputs(name):
    model = read(fixture(name))
    arrays, info = expected(name)
    assert max_error(model, arrays) < TOLERANCE
    assert model.format == ("torch-legacy" if "legacy" in name else "torch-zip")
    assert model.topology == "partial"
    for layer, spec in zip(model.lstm_layers, info["layers"], strict=True):
        assert layer.name == spec.get("names_by_file", {}).get(name, spec["name"])
        assert (layer.input_size, layer.hidden_size, layer.proj_size, layer.num_directions) == (
            spec["input_size"], spec["hidden_size"], spec["proj_size"], spec["directions"])
        assert all(d.bias_terms == 2 for d in layer.directions)


@pytest.mark.parametrize("name,dtype", [("torch_fp16.pt", "float16"), ("torch_bf16.pt", "bfloat16"),
                                        ("torch_fp64.pt", "float64"), ("charlm.pt", "float32")])
def test_stored_dtype_is_the_files(name, dtype):
    layer = read(fixture(name)).lstm_layers[0]
    assert {m.stored_dtype for m in layer.directions[0].matrices.values()} == {dtype}
    assert layer.directions[0].bias_dtype == dtype


def test_layers_chain_and_other_tensors_pass_through():
    model = read(fixture("charlm.pt"))
    assert [layer.inputs for layer in model.lstm_layers] == [None, ["lstm_l0"]]
    assert list(model.tensors) == ["embed.weight", "head.weight", "head.bias"]
    assert any("does not say which layer" in note for note in model.notes)


def test_training_checkpoint_keeps_everything_else():
    model = read(fixture("torch_checkpoint.pth"))
    assert "state dict read from checkpoint['model_state_dict']" in model.notes
    assert "fc.weight" in model.tensors
    assert "optimizer_state_dict/state/0/exp_avg" in model.tensors
    assert model.meta["torch_tree"]["epoch"] == 3 and model.meta["torch_tree"]["loss"] == 0.5


def torch_lstm(torch, layer, dtype):
    """A one-layer ``nn.LSTM`` holding ``layer``'s weights (biases split as b_ih = b, b_hh = 0)."""
    lstm = torch.nn.LSTM(layer.input_size, layer.hidden_size, proj_size=layer.proj_size,
                         bidirectional=layer.num_directions == 2, batch_first=True, dtype=dtype)
    weights = {}
    for suffix, direction in zip(("_l0", "_l0_reverse"), layer.directions):
        weights[f"weight_ih{suffix}"] = direction.W.materialize()
        weights[f"weight_hh{suffix}"] = direction.R.materialize()
        weights[f"bias_ih{suffix}"] = direction.b
        weights[f"bias_hh{suffix}"] = np.zeros_like(direction.b)
        if direction.proj is not None:
            weights[f"weight_hr{suffix}"] = direction.proj.materialize()
    lstm.load_state_dict({k: torch.tensor(v, dtype=dtype) for k, v in weights.items()})
    return lstm


@pytest.mark.parametrize("name", TORCH_FILES)
def test_fixture_agrees_with_torch_nn_lstm(name):
    torch = pytest.importorskip("torch")
    model = read(fixture(name))
    x = np.random.default_rng(0).normal(size=(3, 7, model.lstm_layers[0].input_size))
    for layer, (y, h, c) in zip(model.lstm_layers, run_stack(model.lstm_layers, x)):
        with torch.no_grad():
            ty, (th, tc) = torch_lstm(torch, layer, torch.float64)(torch.from_numpy(x))
        for ours, theirs in ((y, ty), (h, th), (c, tc)):
            np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-10)
        x = y


def assert_same_checkpoint(torch, ours, theirs, where=""):
    if isinstance(theirs, torch.Tensor):
        assert type(ours) is type(theirs) and ours.dtype == theirs.dtype, where
        assert ours.shape == theirs.shape and ours.requires_grad == theirs.requires_grad, where
        as_bytes = [t.detach().contiguous().reshape(-1).view(torch.uint8) for t in (ours, theirs)]
        assert torch.equal(*as_bytes), where
    elif isinstance(theirs, dict):
        assert type(ours) is type(theirs) and list(ours) == list(theirs), where
        for key in theirs:
            assert_same_checkpoint(torch, ours[key], theirs[key], f"{where}/{key}")
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), where
        for k, (a, b) in enumerate(zip(ours, theirs)):
            assert_same_checkpoint(torch, a, b, f"{where}/{k}")
    else:
        assert ours == theirs and type(ours) is type(theirs), where


@pytest.mark.parametrize("name", TORCH_FILES)
def test_round_trip_is_bitwise_and_loads_weights_only(tmp_path, name):
    torch = pytest.importorskip("torch")
    path = fixture(name)
    output = tmp_path / "out.pt"
    torch_checkpoint.write(read(path), output)
    original = torch.load(path, weights_only=False)
    assert_same_checkpoint(torch, torch.load(output, weights_only=True), original)
    assert output.read_bytes()[:4] == b"PK\x03\x04"  # legacy inputs come back as zip files
    again = read(output)
    assert max_error(again, expected(name)[0]) < TOLERANCE


def changed(direction, rng, scale=0.05):
    """The same direction with perturbed weights and bias."""
    return LSTMDirection(
        W=Dense(direction.W.materialize() + rng.normal(0, scale, direction.W.shape)),
        R=Dense(direction.R.materialize() + rng.normal(0, scale, direction.R.shape)),
        b=direction.b + rng.normal(0, scale, direction.b.shape),
        proj=direction.proj, bias_terms=direction.bias_terms, bias_dtype=direction.bias_dtype)


@pytest.mark.parametrize("name", ["torch_checkpoint.pth", "torch_bidir_proj.pt", "torch_bf16.pt",
                                  "torch_fp16.pt", "torch_fp64.pt", "torch_cell.pt"])
def test_changed_weights_are_written_in_the_files_dtype(tmp_path, name):
    torch = pytest.importorskip("torch")
    model = read(fixture(name))
    rng = np.random.default_rng(1)
    for layer in model.lstm_layers:
        layer.directions = [changed(d, rng) for d in layer.directions]
    output = tmp_path / "changed.pt"
    torch_checkpoint.write(model, output)
    original, written = (torch.load(p, weights_only=True) for p in (fixture(name), output))
    before, after = (c.get("model_state_dict", c) for c in (original, written))
    assert [(k, v.dtype, v.shape) for k, v in after.items()] == [
        (k, v.dtype, v.shape) for k, v in before.items()]
    for key in before:  # only weight_ih, weight_hh and bias_ih change (bias_hh holds the split)
        if not any(role in key for role in ("weight_ih", "weight_hh", "bias_ih")):
            assert torch.equal(after[key], before[key]), key
    if "optimizer_state_dict" in original:
        key = "optimizer_state_dict"
        assert_same_checkpoint(torch, written[key], original[key])
    eps = {"torch_fp16.pt": np.finfo(np.float16).eps, "torch_bf16.pt": 2.0**-7}.get(name, 1e-6)
    for layer, again in zip(model.lstm_layers, read(output).lstm_layers):
        for ours, theirs in zip(layer.directions, again.directions):
            for role, weight in ours.matrices.items():
                found = theirs.matrices[role].materialize()
                np.testing.assert_allclose(found, weight.materialize(), rtol=eps, atol=1e-30)
            np.testing.assert_allclose(theirs.b, ours.b, rtol=0, atol=eps)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_added_projection_is_written_for_nn_lstm_proj_size(tmp_path):
    torch = pytest.importorskip("torch")
    model = read(fixture("torch_checkpoint.pth"))
    layer = model.lstm_layers[0]
    direction, rng = layer.directions[0], np.random.default_rng(3)
    hidden, proj = layer.hidden_size, 5
    layer.directions = [LSTMDirection(
        W=direction.W, R=Dense(rng.normal(0, 0.3, (4 * hidden, proj))),
        b=direction.b, proj=Dense(rng.normal(0, 0.3, (proj, hidden))), bias_terms=2)]
    output = tmp_path / "proj.pt"
    torch_checkpoint.write(model, output)
    state = torch.load(output, weights_only=True)["model_state_dict"]
    assert list(state) == ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0",
                           "rnn.bias_hh_l0", "rnn.weight_hr_l0", "fc.weight", "fc.bias"]
    lstm = torch.nn.LSTM(layer.input_size, hidden, proj_size=proj, batch_first=True)
    lstm.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("rnn.")})
    x = np.random.default_rng(4).normal(size=(2, 6, layer.input_size)).astype(np.float32)
    with torch.no_grad():
        y = lstm(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(run_layer(layer, x)[0], y, atol=1e-5)


def save(torch, tmp_path, obj, name="made.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_data_parallel_prefix_and_bias_free_lstm(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, num_layers=2, bias=False, batch_first=True)
    state = OrderedDict((f"module.encoder.{k}", v) for k, v in lstm.state_dict().items())
    path = save(torch, tmp_path, {"net": state, "step": 10})
    model = read(path)
    assert [layer.name for layer in model.lstm_layers] == ["encoder_l0", "encoder_l1"]
    directions = [d for layer in model.lstm_layers for d in layer.directions]
    assert all(d.bias_terms == 0 and not d.b.any() for d in directions)
    assert any("module." in note for note in model.notes)
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    with torch.no_grad():
        y = lstm(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(run_stack(model.lstm_layers, x)[-1][0], y, atol=1e-5)
    torch_checkpoint.write(model, tmp_path / "out.pt")
    written = torch.load(tmp_path / "out.pt", weights_only=True)
    assert_same_checkpoint(torch, written, torch.load(path))


def test_gru_beside_an_lstm_is_kept_as_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    modules = torch.nn.ModuleDict({"gru": torch.nn.GRU(3, 4), "lstm": torch.nn.LSTM(4, 5)})
    model = read(save(torch, tmp_path, modules.state_dict()))
    assert [layer.name for layer in model.lstm_layers] == ["lstm_l0"]
    assert "gru.weight_ih_l0" in model.tensors
    assert any("gru.weight_ih_l0" in note and "not LSTM-shaped" in note for note in model.notes)


def tensors(torch, **shapes):
    return {name: torch.zeros(*shape) for name, shape in shapes.items()}


@pytest.mark.parametrize("make,message", [
    (lambda t: {"a": t.zeros(3), "b": 1}, "no nn.LSTM or nn.LSTMCell parameters"),
    (lambda t: t.nn.GRU(3, 4).state_dict(), "no LSTM layer found"),
    (lambda t: tensors(t, weight_ih_l0=(16, 3)), r"incomplete LSTM parameters \['weight_ih_l0'\]"),
    (lambda t: tensors(t, weight_ih_l0=(16, 3), weight_hh_l0=(16, 4), bias_ih_l0=(16,)),
     "incomplete LSTM parameters"),
    (lambda t: tensors(t, weight_ih_l0=(16, 3), weight_hh_l0=(16, 4), bias_ih_l0=(16,),
                       bias_hh_l0=(15,)), r"biases must have shape \(16,\)"),
    (lambda t: tensors(t, weight_ih_l0=(16, 3), weight_hh_l0=(16, 4, 1)), "not a matrix or vector"),
    (lambda t: {"weight_ih_l0": t.zeros(16, 3, dtype=t.int64), "weight_hh_l0": t.zeros(16, 4)},
     "weight_ih_l0 is int64; LSTM weights must be floats"),
    (lambda t: tensors(t, weight_ih_l0_reverse=(16, 3), weight_hh_l0_reverse=(16, 4)),
     "has no forward direction"),
    (lambda t: tensors(t, weight_ih=(16, 3), weight_hh=(16, 2), weight_hr=(2, 4)),
     "an nn.LSTMCell has no weight_hr"),
    (lambda t: tensors(t, weight_ih_l0=(16, 3), weight_hh_l0=(16, 2), weight_hr_l0=(3, 4)),
     "recurrent weights must be"),
])
def test_bad_state_dicts_are_refused(tmp_path, make, message):
    torch = pytest.importorskip("torch")
    with pytest.raises(InputError, match=message):
        read(save(torch, tmp_path, make(torch)))


class Net:
    """A whole pickled object, as ``torch.save(model)`` writes it: refused, never built."""

    built = []

    def __reduce__(self):
        return Net.built.append, ("constructed",)


def test_pickled_module_is_refused_without_running(tmp_path):
    torch = pytest.importorskip("torch")
    path = save(torch, tmp_path, {"model": torch.nn.LSTM(3, 4), "extra": Net()})
    with pytest.raises(InputError, match="refusing to load: the pickle references"):
        read(path)
    assert Net.built == []


def test_writer_needs_a_model_read_from_a_state_dict(tmp_path):
    rng = np.random.default_rng(0)
    direction = LSTMDirection(W=rng.normal(size=(8, 3)), R=rng.normal(size=(8, 2)), b=np.zeros(8))
    model = Model(layers=[LSTMLayer("lstm", [direction])])
    with pytest.raises(OptionError, match="was not read from a PyTorch state dict"):
        torch_checkpoint.write(model, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_bfloat16_rounding_is_nearest_even():
    values = np.array([1.0, 1.00390625, 1.01171875, -2.5, np.inf, np.nan, 3.4e38], np.float32)
    bits = torch_checkpoint.from_float(values, "bfloat16")
    assert bits.dtype == np.uint16
    assert list(bits[:5]) == [0x3F80, 0x3F80, 0x3F82, 0xC020, 0x7F80]
    assert bits[5] == 0x7FC0 and bits[6] == 0x7F80  # NaN stays NaN; past the range rounds to inf
    widened = torch_checkpoint.to_float(Tensor("x", bits[:5], "bfloat16"))
    np.testing.assert_array_equal(widened, [1.0, 1.0, 1.015625, -2.5, np.inf])
