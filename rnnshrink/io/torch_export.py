"""Export a model's LSTM stack as a state dict of ``torch.nn.LSTM`` modules, without torch.

The layers of ``model.lstm_layers`` (each fed the previous one's output) are grouped: a run of
consecutive layers with the same hidden size, projection size and number of directions is one
``nn.LSTM(num_layers=len(run), batch_first=True)``. One group is the module ``lstm``; several
are ``lstm0``, ``lstm1``, ... run one after the other. Keys are those of
``nn.ModuleDict({name: nn.LSTM(...)}).state_dict()``: ``{module}.weight_ih_l{k}[_reverse]``,
``weight_hh``, ``bias_ih``, ``bias_hh`` and, for a projection, ``weight_hr`` (PyTorch's
``proj_size``: ``h = W_hr (o ⊙ tanh c)``, the IR's ``proj``).

What ``nn.LSTM`` can hold: an SVD projection (``proj_size``) and removed units (a smaller
``hidden_size``) keep their compact shapes; every other representation (low-rank, sparse,
quantized, float16 / bfloat16 / float64 storage) is written materialized as dense float32, and
:func:`~rnnshrink.io.exporting.materialized` lists each such matrix for the returned description. Biases:
``bias_hh`` is the file's original recurrent bias where the layer has one at its current shape
(PyTorch and ONNX sources) and ``bias_ih = b - bias_hh``; otherwise ``bias_hh = 0`` and
``bias_ih = b``. Refused: gate / cell / hidden activations other than sigmoid / tanh / tanh,
a cell clip, a reverse-only direction, ``proj_size >= hidden_size``.

References
----------
PyTorch ``nn.LSTM`` documentation (parameter names and shapes, ``proj_size``).
"""

from collections import OrderedDict

import numpy as np

from ..errors import OptionError
from ..model import SIGMOID, TANH
from .atomic import atomic_path
from .exporting import lstm_stack, materialized
from .gates import from_canonical, to_canonical
from .torch_checkpoint import to_float
from .torch_pickle import StoredTensor
from .torch_writer import save_state

MODULE_CLASS = "torch.nn.LSTM"
# IR attribute -> the one value nn.LSTM has for it
_FIXED = {"gate_activation": SIGMOID, "cell_activation": TANH, "hidden_activation": TANH,
          "clip": None, "reverse_only": False}


def export_torch(model, output):
    """Write the LSTM stack of ``model`` as a ``torch.load(weights_only=True)`` state dict.

    Parameters
    ----------
    model : Model
    output : str or os.PathLike
        Written atomically; an existing file is replaced.

    Returns
    -------
    dict
        ``modules``: per module its ``name``, ``class``, constructor ``args`` and the IR
        ``layers`` it holds; ``materialized``: the matrices written dense (see
        :func:`materialized`); ``notes``; ``snippet``: Python code that builds the modules,
        loads the file and runs them.

    Raises
    ------
    OptionError
        No LSTM layer, layers that do not chain, or a layer ``nn.LSTM`` cannot express.
    """
    layers = lstm_stack(model)
    for layer in layers:
        _check_expressible(layer)
    groups = _groups(layers)
    names = ["lstm"] if len(groups) == 1 else [f"lstm{k}" for k in range(len(groups))]
    state, modules, zero_bias = OrderedDict(), [], []
    for name, group in zip(names, groups):
        for k, layer in enumerate(group):
            for reverse, direction in enumerate(layer.directions):
                tensors, original = _direction_tensors(layer, reverse, direction)
                suffix = f"_l{k}" + "_reverse" * reverse
                for key, values in tensors.items():
                    state[f"{name}.{key}{suffix}"] = StoredTensor(values, "float32")
            if not original:
                zero_bias.append(layer.name)
        modules.append({"name": name, "class": MODULE_CLASS, "args": _args(group),
                        "layers": [layer.name for layer in group]})
    with atomic_path(output) as temporary:
        save_state(state, temporary)
    notes = [f"bias_hh is zero and bias_ih the whole folded bias in {', '.join(zero_bias)} "
             "(no original recurrent bias of that shape)"] if zero_bias else []
    found = materialized(layers)
    if found:
        notes.append("torch.nn.LSTM holds dense matrices only: the low-rank, sparse, gated, "
                     "quantized and entropy-coded matrices listed under 'materialized' are "
                     "written as dense float32 (only a projection, as proj_size, and removed "
                     "units, as a smaller hidden_size, keep their compact shapes)")
    return {"modules": modules, "materialized": found, "notes": notes,
            "snippet": _snippet(modules, output, layers)}


def _check_expressible(layer):
    for attribute, value in _FIXED.items():
        found = getattr(layer, attribute)
        if found != value:
            shown = found.describe() if hasattr(found, "describe") else found
            raise OptionError(
                f"layer {layer.name}: torch.nn.LSTM cannot express {attribute}={shown} (it "
                "has sigmoid gates, tanh cell and hidden activations, no clip and no "
                "reverse-only direction)")
    if layer.proj_size and layer.proj_size >= layer.hidden_size:
        raise OptionError(f"layer {layer.name}: torch.nn.LSTM needs proj_size < hidden_size, "
                          f"got proj_size={layer.proj_size}, hidden_size={layer.hidden_size}")


def _groups(layers):
    """Runs of consecutive layers one nn.LSTM can hold: same hidden, projection, directions."""
    groups = []
    for layer in layers:
        if groups and _shape(layer) == _shape(groups[-1][0]):
            groups[-1].append(layer)
        else:
            groups.append([layer])
    return groups


def _shape(layer):
    return layer.hidden_size, layer.proj_size, layer.num_directions


def _args(group):
    first = group[0]
    return {"input_size": first.input_size, "hidden_size": first.hidden_size,
            "num_layers": len(group), "proj_size": first.proj_size,
            "bidirectional": first.num_directions == 2, "batch_first": True}


def _direction_tensors(layer, reverse, direction):
    """The float32 tensors of one direction in nn.LSTM order, and whether b_hh is the file's.

    Returns
    -------
    tensors : dict of str to ndarray
        ``weight_ih`` (4H, D), ``weight_hh`` (4H, out), ``bias_ih`` (4H,), ``bias_hh`` (4H,),
        ``weight_hr`` (P, H) with a projection.
    original : bool
    """
    b = from_canonical(direction.b.astype(np.float64), "torch")
    b_hh = _recurrent_bias(layer, reverse)
    original = b_hh is not None and b_hh.shape == b.shape
    b_hh = from_canonical(b_hh, "torch") if original else np.zeros_like(b)
    tensors = {
        "weight_ih": from_canonical(direction.W.materialize(), "torch"),
        "weight_hh": from_canonical(direction.R.materialize(), "torch"),
        "bias_ih": b - b_hh,
        "bias_hh": b_hh,
    }
    if direction.proj is not None:
        tensors["weight_hr"] = direction.proj.materialize()
    return {key: np.ascontiguousarray(v, dtype=np.float32) for key, v in tensors.items()}, original


def _recurrent_bias(layer, k):
    """Direction ``k``'s recurrent bias as the file stored it, canonical order; None if none.

    PyTorch sources keep ``bias_hh`` in ``source["biases"]``, ONNX sources ``Rb`` (ONNX order).
    """
    source = layer.source
    biases = source.get("biases")
    if biases and biases[k]:
        return to_canonical(to_float(biases[k]["b_hh"]).astype(np.float64), "torch")
    if source.get("Rb") is not None:
        return to_canonical(np.asarray(source["Rb"][k], np.float64), "onnx")
    return None


def _snippet(modules, output, layers):
    """Python code building the modules, loading the file and running the stack."""
    lines = ["import torch", "from torch import nn", "", "stack = nn.ModuleDict({"]
    for module in modules:
        args = ", ".join(f"{key}={value!r}" for key, value in module["args"].items())
        lines.append(f"    {module['name']!r}: nn.LSTM({args}),")
    lines += [
        "})",
        f"stack.load_state_dict(torch.load({str(output)!r}, weights_only=True))",
        "",
        "",
        "def run(x):",
        f"    # x: float32 (batch, time, {layers[0].input_size}) -> "
        f"(batch, time, {layers[-1].output_size})",
        "    for lstm in stack.values():",
        "        x, _ = lstm(x)",
        "    return x",
    ]
    return "\n".join(lines) + "\n"
