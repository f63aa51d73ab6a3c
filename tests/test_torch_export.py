"""``export_torch``: state dicts that real ``torch.nn.LSTM`` modules load and run as the IR does."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnshrink.errors import OptionError
from rnnshrink.io.torch_export import export_torch
from rnnshrink.model import run_stack

from _models import fixture, model_of

from _models import lstm_layer, stack_model

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TOLERANCE = 1e-5
CASES = [
    ("charlm.pt", None),
    ("keras2_charlm.h5", None),
    ("keras2_charlm.h5", "svd:rank=32"),
    ("charlm.pt", "svd:rank=32"),
    ("charlm.pt", "iss:keep=0.5"),
    ("keras2_charlm.h5", "iss:keep=0.5"),
    ("charlm.pt", "quant:bits=4,group=64"),
    ("keras2_charlm.h5", "quant:bits=4,group=64"),
    ("torch_bidir_proj.pt", None),
    ("torch_bidir_proj.pt", "quant:bits=4,group=64"),
    ("onnx_bidir.onnx", None),
    ("onnx_bidir.onnx", "iss:keep=0.5"),
    ("charlm.pt", "slim:variant=LSTM4a"),
    ("keras2_charlm.h5", "slim:variant=LSTM11"),
]


def input_of(model):
    """The fixture's expected-output input, ``x`` of shape (3, 7, input)."""
    return np.load(FIXTURES / "expected" / f"{Path(model.path).stem}.npz")["x"].astype(np.float32)


def run_torch(description, path, x):
    """Build the modules the description names, load the file, run; per module (y, h, c)."""
    torch = pytest.importorskip("torch")
    state = torch.load(path, weights_only=True)
    results, y = [], torch.from_numpy(x)
    for module in description["modules"]:
        assert module["class"] == "torch.nn.LSTM"
        lstm = torch.nn.LSTM(**module["args"])
        prefix = module["name"] + "."
        lstm.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        with torch.no_grad():
            y, (h, c) = lstm(y)
        results.append((y.numpy(), h.numpy(), c.numpy()))
    return results


@pytest.mark.parametrize("name,step", CASES)
def test_torch_runs_the_exported_stack_as_the_reference_pass(name, step, tmp_path):
    model = model_of(name, step)
    description = export_torch(model, tmp_path / "out.pt")
    x = input_of(model)
    expected = run_stack(model.lstm_layers, x)
    found = run_torch(description, tmp_path / "out.pt", x)
    assert sum(len(m["layers"]) for m in description["modules"]) == len(model.lstm_layers)
    k = 0
    for module, (y, h, c) in zip(description["modules"], found, strict=True):
        layers = [expected[k + i] for i in range(len(module["layers"]))]
        assert module["layers"] == [layer.name for layer in model.lstm_layers[k:k + len(layers)]]
        k += len(layers)
        assert np.abs(y - layers[-1][0]).max() < TOLERANCE
        # torch stacks final states layer-major, then direction
        assert np.abs(h - np.concatenate([r[1] for r in layers])).max() < TOLERANCE
        assert np.abs(c - np.concatenate([r[2] for r in layers])).max() < TOLERANCE


def test_plain_charlm_is_one_module_keeping_the_recurrent_bias(tmp_path):
    torch = pytest.importorskip("torch")
    description = export_torch(model_of("charlm.pt"), tmp_path / "out.pt")
    assert description["modules"] == [{
        "name": "lstm", "class": "torch.nn.LSTM", "layers": ["lstm_l0", "lstm_l1"],
        "args": {"input_size": 16, "hidden_size": 128, "num_layers": 2, "proj_size": 0,
                 "bidirectional": False, "batch_first": True}}]
    assert description["materialized"] == [] and description["notes"] == []
    original = torch.load(fixture("charlm.pt"), weights_only=True)
    state = torch.load(tmp_path / "out.pt", weights_only=True)
    assert list(state) == [f"lstm.{k}_l{n}" for n in range(2)
                           for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    for key, value in state.items():
        assert value.dtype == torch.float32
        assert torch.equal(value, original[key]), key


def test_svd_projection_becomes_proj_size(tmp_path):
    description = export_torch(model_of("keras2_charlm.h5", "svd:rank=32"), tmp_path / "out.pt")
    [module] = description["modules"]
    assert module["args"]["proj_size"] == 32 and module["args"]["num_layers"] == 2
    assert "bias_hh is zero" in description["notes"][0]  # Keras stores one bias


def test_different_widths_are_separate_modules(tmp_path):
    torch = pytest.importorskip("torch")
    model = model_of("charlm.pt", "iss:keep=0.5")  # lstm_l0 loses units, lstm_l1 keeps its width
    description = export_torch(model, tmp_path / "out.pt")
    assert [(m["name"], m["args"]["input_size"], m["args"]["hidden_size"], m["layers"])
            for m in description["modules"]] == [
        ("lstm0", 16, 64, ["lstm_l0"]), ("lstm1", 64, 128, ["lstm_l1"])]
    state = torch.load(tmp_path / "out.pt", weights_only=True)
    original = torch.load(fixture("charlm.pt"), weights_only=True)
    assert not state["lstm0.bias_hh_l0"].any()
    assert torch.equal(state["lstm1.bias_hh_l0"], original["lstm.bias_hh_l1"])
    assert description["notes"] == ["bias_hh is zero and bias_ih the whole folded bias in "
                                    "lstm_l0 (no original recurrent bias of that shape)"]


def test_compressed_matrices_are_listed_as_materialized(tmp_path):
    description = export_torch(model_of("charlm.pt", "quant:bits=4,group=64"), tmp_path / "o.pt")
    assert description["materialized"] == [
        f"lstm_l{k} forward {role}: quantized (bits=4, scales={scales}) -> dense float32"
        for k in range(2) for role, scales in (("W", "row" if k == 0 else "group64"),
                                               ("R", "group64"))]
    assert any("dense matrices only" in note for note in description["notes"])


def test_snippet_builds_loads_and_runs(tmp_path):
    torch = pytest.importorskip("torch")
    model = model_of("torch_bidir_proj.pt")
    description = export_torch(model, tmp_path / "out.pt")
    namespace = {}
    exec(description["snippet"], namespace)
    x = input_of(model)
    with torch.no_grad():
        y = namespace["run"](torch.from_numpy(x)).numpy()
    assert np.abs(y - run_stack(model.lstm_layers, x)[-1][0]).max() < TOLERANCE


def test_file_loads_with_weights_only_and_export_does_not_import_torch(tmp_path):
    source, target = str(fixture("charlm.pt")), str(tmp_path / "o.pt")
    code = ("import sys, rnnshrink\nfrom rnnshrink.io.torch_export import export_torch\n"
            f"export_torch(rnnshrink.read({source!r}), {target!r})\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("change,attribute", [
    ({"clip": 3.0}, "clip=3.0"),
    ({"reverse_only": True}, "reverse_only=True"),
])
def test_refuses_what_nn_lstm_cannot_express(change, attribute, tmp_path):
    model = model_of("charlm.pt")
    layer = dataclasses.replace(model.lstm_layers[1], **change)
    message = f"layer lstm_l1: torch.nn.LSTM cannot express {attribute}"
    with pytest.raises(OptionError, match=message):
        export_torch(model.replace_layer("lstm_l1", layer), tmp_path / "out.pt")
    assert list(tmp_path.iterdir()) == []


def test_refuses_hard_sigmoid_gates(tmp_path):
    with pytest.raises(OptionError, match=r"layer bidirectional: torch.nn.LSTM cannot express "
                                          r"gate_activation=hard_sigmoid\(0.2x\+0.5\)"):
        export_torch(model_of("keras2_bidir_hardsig.h5"), tmp_path / "out.pt")
    assert list(tmp_path.iterdir()) == []


def test_refuses_layers_that_do_not_chain_and_wide_projections(tmp_path):
    model = stack_model()
    rng = np.random.default_rng(1)
    broken = model.replace_layer("lstm_1", lstm_layer("lstm_1", 5, 8, rng))
    with pytest.raises(OptionError, match="LSTM layers lstm_0 and lstm_1 do not chain"):
        export_torch(broken, tmp_path / "out.pt")
    wide = model.replace_layer("lstm_1", lstm_layer("lstm_1", 10, 8, rng, proj=8))
    with pytest.raises(OptionError, match="proj_size < hidden_size, got proj_size=8, hidden_s"):
        export_torch(wide, tmp_path / "out.pt")
    assert list(tmp_path.iterdir()) == []
