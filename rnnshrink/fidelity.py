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
from .model.network import consumers_through_identity, feeding_layer, run_model

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
    name, table = _embedding_table(model, first)
    if table is not None:
        tokens = rng.integers(0, table.shape[0], size=(batch, steps))
        return table[tokens].astype(np.float64), (
            f"{batch} random token sequences of length {steps} through embedding {name}"
        )
    x = rng.standard_normal((batch, steps, first.input_size))
    return x, f"{batch} seeded standard-normal sequences of length {steps}"


def _embedding_table(model, first):
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


def load_calibration(path, model):
    """User inputs for the first LSTM layer from ``.npy`` (array (N, T, D))."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise OptionError(f"{path}: cannot read calibration inputs ({error})") from None
    width = model.lstm_layers[0].input_size
    if x.ndim != 3 or x.shape[2] != width:
        raise OptionError(f"{path}: calibration inputs must have shape (N, T, {width}), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise OptionError(f"{path}: calibration inputs hold NaN or Inf")
    return x.astype(np.float64), f"{x.shape[0]} sequences of length {x.shape[1]} from {path}"


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
        head0, head1 = _head(original, layer), _head(compressed, layer)
        if head0 is not None and head1 is not None:
            error = relative_error(_apply_dense(head1, y1), _apply_dense(head0, y0))
            layers[layer.name] = {"output_rel_error": error, "state_rel_error": None,
                                  "compared_at": head0.name}
        else:
            layers[layer.name] = {"output_rel_error": None, "state_rel_error": None,
                                  "compared_at": "next layer"}
    last = original.lstm_layers[-1]
    head0, head1 = _head(original, last), _head(compressed, last)
    if head0 is not None and head1 is not None:
        overall = relative_error(_apply_dense(head1, after[last.name][0]),
                                 _apply_dense(head0, before[last.name][0]))
    else:
        overall = layers[last.name]["output_rel_error"]
    return {"layers": layers, "output_rel_error": overall,
            "state_rel_error": layers[last.name]["state_rel_error"]}


def relative_error(value, reference):
    """``‖value − reference‖_F / ‖reference‖_F`` (0 when both are zero)."""
    scale = np.linalg.norm(reference)
    difference = np.linalg.norm(np.asarray(value) - np.asarray(reference))
    return float(difference / scale) if scale > 0 else float(difference)


def _apply_dense(layer, y):
    out = layer.W.operator()(y)
    return out if layer.b is None else out + layer.b


def _head(model, layer):
    """The Dense layer consuming ``layer``'s output directly or through identity layers."""
    return next((c for c in consumers_through_identity(model, layer.name)
                 if isinstance(c, DenseLayer)), None)
