"""Seed files for fuzzing the readers: small valid files of every format rnnshrink reads.

The fixtures where they are small; a cut-down ``.keras`` (the char LM at 2 units) and
containers compressed from a small fixture made on the fly.
"""

import io
import json
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


SEED_FIXTURES = {
    "torch-zip": ["torch_checkpoint.pth", "torch_bf16.pt", "torch_cell.pt"],
    "torch-legacy": ["charlm_legacy.pt"],
    "safetensors": ["torch_bidir_proj.safetensors"],
    "onnx": ["onnx_attrs.onnx", "onnx_handmade_if.onnx", "onnx_layout1.onnx", "onnx_external.onnx"],
    "keras-h5": ["keras2_cudnn.h5", "keras3_bidir_hardsig.h5", "keras2_cudnn_weights.h5"],
}
_SMALLER = {96: 7, 16: 3, 128: 2, 512: 8}  # charlm widths -> a tiny model of the same layout


def seeds(fmt, folder):
    """Small valid files of format ``fmt`` as ``{name: bytes}``; side files (ONNX external
    data) are written into ``folder``, where the mutated files must be read."""
    folder = Path(folder)
    if fmt == "keras-zip":
        return {"tiny.keras": _tiny_keras(FIXTURES / "keras3_charlm.keras")}
    if fmt == "rnnshrink":
        return _containers(folder)
    for name in ("onnx_external.data",) if fmt == "onnx" else ():
        (folder / name).write_bytes((FIXTURES / name).read_bytes())
    return {name: (FIXTURES / name).read_bytes() for name in SEED_FIXTURES[fmt]}


def _smaller(value):
    if isinstance(value, dict):
        return {k: _smaller(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_smaller(v) for v in value]
    return _SMALLER.get(value, value) if type(value) is int else value


def _tiny_keras(source):
    """The charlm .keras file with every width cut down (7 tokens, 3 inputs, 2 units)."""
    with zipfile.ZipFile(source) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    config = _smaller(json.loads(members["config.json"]))
    members["config.json"] = json.dumps(config).encode()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        old, new = Path(folder) / "old.h5", Path(folder) / "new.h5"
        old.write_bytes(members["model.weights.h5"])
        with h5py.File(old, "r") as f, h5py.File(new, "w") as out:
            def copy(name, item):
                if isinstance(item, h5py.Group):
                    out.require_group(name).attrs.update(item.attrs)
                else:
                    shape = tuple(_SMALLER.get(n, n) for n in item.shape)
                    out.create_dataset(name, data=rng.normal(0, 0.3, shape).astype(item.dtype))
                    out[name].attrs.update(item.attrs)
            out.attrs.update(f.attrs)
            f.visititems(copy)
        members["model.weights.h5"] = new.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _containers(folder):
    """Containers of a bidirectional projected LSTM: quantized, pruned, low-rank."""
    from rnnshrink import api
    from rnnshrink.pipeline import parse_step

    recipes = {"quant": ["quant:bits=4,group=4"], "prune": ["prune:sparsity=0.5"],
               "lowrank": ["svd:rank=2", "quant:bits=8"], "pruned_quant":
               ["prune:sparsity=0.6", "quant:bits=3"]}
    found = {}
    for name, steps in recipes.items():
        output = Path(folder) / f"{name}.h5"
        api.compress_file(FIXTURES / "torch_bidir_proj.pt", [parse_step(s) for s in steps],
                          output, force=True)
        found[name + ".h5"] = output.read_bytes()
        output.unlink()
    return found
