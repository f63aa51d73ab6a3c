"""Drop-in checkpoints: a compressed model written back in its source's own format and shapes.

Every tensor keeps its original name, shape and dtype; the LSTM weights (and a refit consumer)
hold the compressed model's materialized values. Structural compression is folded back exactly:

* an SVD projection ``h' = P m`` (P of shape (r, H)) is folded into whatever reads ``h'``:
  the layer's own recurrence ``R' h' = (R' P) m`` and its consumer ``K' h' = (K' P) m``; the
  layer's output becomes ``m`` again, at the original width;
* an ISS-removed unit comes back as a unit whose gate rows and biases are zero: with zero
  initial state its cell stays ``c = f c + i g(0) = 0`` and its output ``h = o h(0) = 0``
  exactly, and the columns reading it are zero.

So the drop-in computes exactly what the compressed model computes (see
``tests/test_dropin.py``).
"""

import importlib

import numpy as np

from .errors import OptionError
from .model import Dense, DenseLayer, LSTMDirection, LSTMLayer, Tensor

# format -> module of rnnshrink.io whose write(model, path) writes it
WRITERS = {
    "keras-h5": "keras_writer",
    "keras-zip": "keras_writer",
    "torch-zip": "torch_checkpoint",
    "torch-legacy": "torch_checkpoint",
    "safetensors": "safetensors_file",
    "onnx": "onnx_writer",
}


def write_same(compressed, original, output):
    """Write ``compressed`` as a drop-in checkpoint in ``original``'s format and shapes."""
    if original.format not in WRITERS:
        raise OptionError(f"--format same cannot write {original.format} files")
    writer = importlib.import_module(f"rnnshrink.io.{WRITERS[original.format]}")
    writer.write(expand_to_original(compressed, original), output)


def expand_to_original(compressed, original):
    """A model with ``original``'s layers and shapes computing what ``compressed`` computes.

    Returns
    -------
    Model
        Dense weights only, every layer at its original shape.
    """
    readers = {}  # LSTM layer name -> per direction, map from original-width to compressed output
    layers, tensors = [], dict(original.tensors)
    for old in original.layers:
        new = compressed.layer(old.name)
        if isinstance(old, LSTMLayer):
            layer, readers[old.name] = _expand_lstm(old, new, _input_map(original, old, readers))
        elif isinstance(old, DenseLayer):
            layer = _expand_dense(old, new, _input_map(original, old, readers))
            if new.source.get("changed"):
                _update_held_tensors(tensors, layer)
        else:
            layer = old
        layers.append(layer)
    return original.replace(layers=layers, tensors=tensors)


def _expand_lstm(old, new, input_map):
    """One layer back in its original shapes; also returns its output expansion maps."""
    hidden = old.hidden_size
    if old.proj_size and (new.proj_size, new.hidden_size) != (old.proj_size, old.hidden_size):
        raise OptionError(f"--format same: layer {old.name} has a projection whose shape "
                          "compression changed; it cannot be written back in its original shapes")
    if new.hidden_size != hidden and new.cell_activation(np.zeros(1))[0] != 0:
        raise OptionError(f"--format same: layer {old.name} lost units but its cell activation "
                          f"{new.cell_activation.name} is not 0 at 0, so a zero unit is not silent")
    kept = new.source.get("iss_kept") or [list(range(hidden))] * new.num_directions
    directions, maps = [], []
    for k, (old_d, new_d) in enumerate(zip(old.directions, new.directions)):
        units = np.asarray(kept[k], dtype=np.int64)
        select = np.zeros((len(units), hidden))
        select[np.arange(len(units)), units] = 1.0
        fold = select if new_d.proj is None or old.proj_size else new_d.proj.materialize() @ select
        rows = np.concatenate([g * hidden + units for g in range(4)])
        W = _scatter_rows(new_d.W.materialize() @ input_map, rows, 4 * hidden)
        recurrent = new_d.R.materialize() @ (np.eye(new_d.R.shape[1]) if old.proj_size else fold)
        R = _scatter_rows(recurrent, rows, 4 * hidden)
        b = np.zeros(4 * hidden)
        b[rows] = new_d.b
        proj = None if old_d.proj is None else Dense(new_d.proj.materialize(), old_d.proj.stored_dtype)
        directions.append(LSTMDirection(
            W=Dense(W, old_d.W.stored_dtype), R=Dense(R, old_d.R.stored_dtype), b=b, proj=proj,
            bias_terms=old_d.bias_terms, bias_dtype=old_d.bias_dtype))
        maps.append(np.eye(old.out_size) if old.proj_size else fold)
    layer = LSTMLayer(old.name, directions, new.gate_activation, new.cell_activation,
                      new.hidden_activation, new.clip, old.reverse_only, old.inputs, old.source)
    return layer, maps


def _expand_dense(old, new, input_map):
    W = new.W.materialize() @ input_map
    return DenseLayer(old.name, Dense(W, old.W.stored_dtype), new.b, old.bias_dtype,
                      old.activation, old.inputs, old.source)


def _input_map(original, layer, readers):
    """Matrix mapping the original-width input of ``layer`` to its compressed-width input."""
    feeders = [name for name in (layer.inputs or ()) if name in readers]
    if not feeders and layer.inputs is None:
        previous = [m for m in original.lstm_layers if m.name in readers]
        feeders = [previous[-1].name] if previous and previous[-1].output_size == _width(layer) else []
    if not feeders:
        return np.eye(_width(layer))
    maps = readers[feeders[0]]
    rows = sum(m.shape[0] for m in maps)
    cols = sum(m.shape[1] for m in maps)
    block = np.zeros((rows, cols))
    r = c = 0
    for m in maps:  # block-diagonal over directions: output is forward ‖ reverse
        block[r:r + m.shape[0], c:c + m.shape[1]] = m
        r, c = r + m.shape[0], c + m.shape[1]
    return block


def _width(layer):
    return layer.input_size if isinstance(layer, LSTMLayer) else layer.W.shape[1]


def _scatter_rows(values, rows, count):
    full = np.zeros((count, values.shape[1]))
    full[rows] = values
    return full


def _update_held_tensors(tensors, layer):
    """A refit Dense layer whose reader also keeps its weight as a pass-through tensor (ONNX)."""
    layout = layer.source.get("layout", {})
    names = [name for name, role in layout.items() if role == "W"]
    if not names and layer.source.get("tensors") is not None:
        raise OptionError(f"--format same: layer {layer.name} was refit but its weight cannot be "
                          "written back unambiguously")
    for name in names:
        values = layer.W.materialize()
        values = values.T if layer.source.get("transposed") else values
        stored = tensors[name]
        tensors[name] = Tensor(name, values.astype(stored.data.dtype), stored.dtype)
