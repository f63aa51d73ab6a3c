"""How far a compressed model's outputs are from the original's, measured with the reference pass.

Both models run the same probe inputs through :func:`rnnshrink.model.run_layer`; the figure for
a layer is the relative Frobenius error ``‖y − y₀‖ / ‖y₀‖`` of its output sequence (and of its
final hidden state). Where compression changed a layer's output width (an SVD projection, ISS
removing units), the layer is compared where its output is next seen at the original width:
at the Dense layer that consumes it (its pre-activation outputs), or through the next LSTM
layer's error.
"""

import numpy as np

from .errors import OptionError
from .model import DenseLayer, EmbeddingLayer
from .model.network import apply_dense, consumers_through_identity, feeding_layer, run_model

def probe_inputs(model, batch=8, steps=50, seed=0):
    """Seeded probe sequences for the first LSTM layer, as realistic as the file allows.

    Rows of the Embedding table that feeds the first LSTM when the file has one (random
    tokens; for a state dict, a tensor named like an embedding of the right width),
    otherwise standard normal inputs.

    Returns
    -------
    x : ndarray of shape (batch, steps, input)
    description : str
    """
    rng = np.random.default_rng(seed)
    first = model.lstm_layers[0]
    name, table = embedding_table(model, first)
    if table is not None:
        tokens = rng.integers(0, table.shape[0], size=(batch, steps))
        return table[tokens].astype(np.float64), (
            f"{batch} random token sequences of length {steps} through embedding {name}"
        )
    x = rng.standard_normal((batch, steps, first.input_size))
    return x, f"{batch} seeded standard-normal sequences of length {steps}"


def embedding_table(model, first):
    """The Embedding feeding ``first``: from the topology, else (state dicts, which do not
    say) a 2-D pass-through tensor named like an embedding whose width is the input width."""
    embedding = feeding_layer(model, first, EmbeddingLayer)
    if embedding is not None and embedding.table.shape[1] == first.input_size:
        return embedding.name, embedding.table
    if first.inputs is None or model.topology == "partial":
        for name, tensor in model.tensors.items():
            data = tensor.data
            if ("embed" in name.lower() and data.ndim == 2 and data.shape[1] == first.input_size
                    and data.dtype.kind == "f"):
                return name, data
    return None, None


class CalibrationInputs(np.ndarray):
    """Inputs of the first LSTM layer (batch, time, input) that also carry given inputs of
    other LSTM layers: ``layer_inputs``, a dict of layer name to (batch, time, input of that
    layer), which :func:`rnnshrink.model.network.trace_model` feeds those layers instead of
    what they would get. Indexing the batch axis (``x[:k]``, ``x[[0, 2]]``) indexes them too;
    any other view drops them (a plain array of first-layer inputs)."""

    def __new__(cls, x, layer_inputs):
        array = np.asarray(x).view(cls)
        array.layer_inputs = layer_inputs
        return array

    def __array_finalize__(self, obj):
        self.layer_inputs = getattr(obj, "layer_inputs", None)

    def __getitem__(self, key):
        result = super().__getitem__(key)
        if isinstance(result, CalibrationInputs):
            batch_only = (isinstance(key, slice) or (isinstance(key, (list, np.ndarray))
                                                     and np.ndim(key) == 1))
            result.layer_inputs = ({name: inputs[key] for name, inputs in self.layer_inputs.items()}
                                   if batch_only and self.layer_inputs else None)
        return result


def load_calibration(path, model):
    """User calibration inputs from ``.npy`` or ``.npz``.

    ``.npy``, or ``.npz`` holding one array not named after an LSTM layer: inputs of the first
    LSTM layer, shape (N, T, D).
    ``.npz`` holding arrays named after LSTM layers: each is that layer's inputs (N, T, its
    input width), all with the same N and T; they replace what the layer would be fed when the
    model is traced (:func:`rnnshrink.model.network.trace_model`). The first layer, when not
    given, gets :func:`probe_inputs` of the same N and T.

    Returns
    -------
    x : ndarray of shape (N, T, input of the first LSTM layer)
        A :class:`CalibrationInputs` carrying the other given layers' inputs, for a mapping.
    description : str

    Raises
    ------
    OptionError
        Unreadable file, an array of the wrong shape, NaN or Inf, an empty ``.npz``, or a name
        that is not one of the model's LSTM layers (the message lists them).
    """
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                arrays = {name: loaded[name] for name in loaded.files}
        else:
            arrays = None
    except (OSError, ValueError) as error:
        raise OptionError(f"{path}: cannot read calibration inputs ({error})") from None
    first = model.lstm_layers[0]
    if arrays is None:
        return _checked(path, loaded, first), (
            f"{loaded.shape[0]} sequences of length {loaded.shape[1]} from {path}")
    if not arrays:
        raise OptionError(f"{path}: holds no arrays")
    if len(arrays) == 1 and next(iter(arrays)) not in _lstm_names(model):
        (x,) = arrays.values()
        return _checked(path, x, first), (
            f"{x.shape[0]} sequences of length {x.shape[1]} from {path}")
    unknown = [name for name in arrays if name not in _lstm_names(model)]
    if unknown:
        raise OptionError(f"{path}: {', '.join(map(repr, unknown))} "
                          f"{'is not an LSTM layer' if len(unknown) == 1 else 'are not LSTM layers'}"
                          f" of the model; its LSTM layers are {', '.join(_lstm_names(model))}")
    given = {name: _checked(path, x, model.layer(name), name) for name, x in arrays.items()}
    sizes = {x.shape[:2] for x in given.values()}
    if len(sizes) > 1:
        raise OptionError(f"{path}: the arrays must share N and T, got "
                          + ", ".join(f"{name} {x.shape}" for name, x in given.items()))
    (batch, steps), = sizes
    x = given.pop(first.name, None)
    if x is None:
        x = probe_inputs(model, batch=batch, steps=steps)[0]
    return CalibrationInputs(x, given), (
        f"{batch} sequences of length {steps} from {path} for LSTM layers "
        f"{', '.join(arrays)}")


def _lstm_names(model):
    return [layer.name for layer in model.lstm_layers]


def _checked(path, x, layer, name=None):
    """``x`` as float64 after checking it is (N, T, layer's input width) and finite."""
    where = f"calibration inputs{'' if name is None else f' of {name}'}"
    width = layer.input_size
    if x.ndim != 3 or x.shape[2] != width or x.dtype.kind not in "fiu":
        raise OptionError(f"{path}: {where} must be numbers of shape (N, T, {width}), "
                          f"got {x.dtype} {x.shape}")
    if not np.all(np.isfinite(x)):
        raise OptionError(f"{path}: {where} hold NaN or Inf")
    return x.astype(np.float64)


def compare(original, compressed, x, seed=0):
    """Relative output errors of ``compressed`` against ``original`` on inputs ``x``.

    Returns
    -------
    dict
        ``layers``: per LSTM layer name, ``output_rel_error`` and ``state_rel_error`` (None
        where the width changed) and ``compared_at``; ``output_rel_error``: the error of what
        the model finally outputs (the Dense head after the last LSTM when the file has one,
        else the last LSTM's output sequence).
    """
    before, after = run_model(original, x, seed), run_model(compressed, x, seed)
    layers = {}
    for layer in original.lstm_layers:
        y0, h0, _ = before[layer.name]
        y1, h1, _ = after[layer.name]
        if y0.shape == y1.shape:
            layers[layer.name] = {"output_rel_error": relative_error(y1, y0),
                                  "state_rel_error": relative_error(h1, h0), "compared_at": "output"}
            continue
        head0, head1 = dense_head(original, layer), dense_head(compressed, layer)
        if head0 is not None and head1 is not None:
            error = relative_error(apply_dense(head1, y1), apply_dense(head0, y0))
            layers[layer.name] = {"output_rel_error": error, "state_rel_error": None,
                                  "compared_at": head0.name}
        else:
            layers[layer.name] = {"output_rel_error": None, "state_rel_error": None,
                                  "compared_at": "next layer"}
    last = original.lstm_layers[-1]
    head0, head1 = dense_head(original, last), dense_head(compressed, last)
    if head0 is not None and head1 is not None:
        overall = relative_error(apply_dense(head1, after[last.name][0]),
                                 apply_dense(head0, before[last.name][0]))
    else:
        overall = layers[last.name]["output_rel_error"]
    return {"layers": layers, "output_rel_error": overall,
            "state_rel_error": layers[last.name]["state_rel_error"]}


def head_output(model, y):
    """What ``model`` finally outputs given its last LSTM layer's output sequence ``y``: the
    Dense head's pre-activations when the file has one (as :func:`compare`), else ``y``."""
    head = dense_head(model, model.lstm_layers[-1])
    return y if head is None else apply_dense(head, y)


def relative_error(value, reference):
    """``‖value − reference‖_F / ‖reference‖_F`` (0 when both are zero)."""
    scale = np.linalg.norm(reference)
    difference = np.linalg.norm(np.asarray(value) - np.asarray(reference))
    return float(difference / scale) if scale > 0 else float(difference)


def dense_head(model, layer):
    """The Dense layer consuming ``layer``'s output directly or through identity layers."""
    return next((c for c in consumers_through_identity(model, layer.name)
                 if isinstance(c, DenseLayer)), None)
