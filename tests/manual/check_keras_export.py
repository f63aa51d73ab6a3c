"""Manual check (not collected by pytest): files from ``export_keras`` load in real Keras 3.

Run from the repository root with the system python (rnnshrink's dependencies)::

    python3 tests/manual/check_keras_export.py [--venv /tmp/venv-keras3] [--out /tmp/keras_export_check]

It exports each case, computes rnnshrink's reference outputs (embedding lookup, the NumPy
reference pass ``run_stack``, the Dense head) into ``<out>/<case>.npz``, then re-runs itself
with ``<venv>/bin/python`` (keras 3 + tensorflow, no rnnshrink) to load every file with
``keras.models.load_model`` and print the max abs difference of the outputs, and how many h5
objects differ from Keras's own re-save of the loaded model (``model.save``). Expected: none,
except for Bidirectional layers: a Bidirectional that Keras builds from a config names its
variables ``forward_lstm/...`` where a model built in code (the fixtures, and this export)
has ``bidirectional/forward_lstm/...``.
"""

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CASES = {  # name -> (fixture, pipeline step or None)
    "charlm_pt_plain": ("charlm.pt", None),
    "keras2_charlm_plain": ("keras2_charlm.h5", None),
    "charlm_pt_iss": ("charlm.pt", "iss:keep=0.5"),
    "keras2_charlm_iss": ("keras2_charlm.h5", "iss:keep=0.5"),
    "keras2_charlm_quant": ("keras2_charlm.h5", "quant:bits=4,group=64"),
    "keras3_bidir_hardsig_plain": ("keras3_bidir_hardsig.h5", None),
    "onnx_bidir_plain": ("onnx_bidir.onnx", None),
    "charlm_pt_last_reversed": ("charlm.pt", "reverse-last"),  # go_backwards on the last layer
}


def export(out):
    sys.path.insert(0, str(ROOT))
    import rnnshrink
    from rnnshrink.io.keras_export import export_keras
    from rnnshrink.model import run_stack
    from rnnshrink.pipeline import Pipeline, parse_step

    tokens = np.load(ROOT / "fixtures" / "charlm_data.npz")["valid_tokens"][:400].reshape(4, 100)
    rng = np.random.default_rng(0)
    for case, (fixture, step) in CASES.items():
        model = rnnshrink.read(ROOT / "fixtures" / fixture)
        if step == "reverse-last":
            last = dataclasses.replace(model.lstm_layers[-1], reverse_only=True)
            model = model.replace_layer(last.name, last)
        elif step:
            model = Pipeline([parse_step(step)]).run(model)
        description = export_keras(model, out / f"{case}.h5")
        layers = {layer.name: layer for layer in model.layers}
        kinds = [entry["class"] for entry in description["layers"]]
        if kinds[0] == "Embedding":
            x = tokens.astype(np.int32)
            y = layers[description["layers"][0]["source"]].table[x].astype(np.float64)
        else:
            x = rng.normal(size=(3, 9, model.lstm_layers[0].input_size)).astype(np.float32)
            y = x.astype(np.float64)
        y = run_stack(model.lstm_layers, y)[-1][0]
        if model.lstm_layers[-1].reverse_only:
            y = y[:, ::-1]  # Keras returns a go_backwards layer's output in reversed time order
        if kinds[-1] == "Dense":
            head = layers[description["layers"][-1]["source"]]
            y = y @ head.W.materialize().T + (0 if head.b is None else head.b)
        np.savez(out / f"{case}.npz", x=x, y=y)
        print(f"exported {case}: {[e['name'] + ':' + e['class'] for e in description['layers']]}")


def check(out):
    import keras

    worst = 0.0
    for case in CASES:
        model = keras.models.load_model(out / f"{case}.h5", compile=False)
        arrays = np.load(out / f"{case}.npz")
        y = np.asarray(model.predict(arrays["x"], verbose=0), dtype=np.float64)
        error = float(np.abs(y - arrays["y"]).max())
        worst = max(worst, error)
        model.save(out / f"{case}.resaved.h5")
        mine, resaved = _layout(out / f"{case}.h5"), _layout(out / f"{case}.resaved.h5")
        differ = sorted(k for k in mine.keys() | resaved.keys() if mine.get(k) != resaved.get(k))
        print(f"{case}: keras {keras.__version__} output {y.shape}, max abs diff {error:.3g}; "
              f"{len(differ)} of {len(mine)} h5 objects differ from Keras's re-save {differ[:4]}")
    print(f"worst max abs diff {worst:.3g}")


def _layout(path):
    """Attributes (model_config parsed), groups, and dataset shapes / dtypes / values of a file."""
    import json

    import h5py

    def value(v):
        v = v.decode() if isinstance(v, bytes) else v
        return json.loads(v) if isinstance(v, str) and v.startswith("{") else (
            v.tolist() if isinstance(v, np.ndarray) else v)

    found = {}
    with h5py.File(path, "r") as h5:
        def visit(name, obj):
            entry = {k: value(v) for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                entry["dataset"] = (obj.shape, obj.dtype.str, obj[()].tobytes())
            found[name] = entry
        visit("/", h5)
        h5.visititems(visit)
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--venv", default="/tmp/venv-keras3")
    parser.add_argument("--out", default="/tmp/keras_export_check")
    parser.add_argument("--check", action="store_true", help="(internal) the Keras side")
    options = parser.parse_args()
    out = Path(options.out)
    if options.check:
        check(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        export(out)
        command = [f"{options.venv}/bin/python", __file__, "--check", "--out", str(out)]
        sys.exit(subprocess.run(command, check=False).returncode)
