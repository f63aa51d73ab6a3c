"""Probe sequences rnnshrink makes itself, from nothing but the model file.

When the user gives no calibration data, the most realistic inputs are the model's own:

* a **language model** (an Embedding feeds the first LSTM, the LSTMs form one forward chain,
  and a Dense head on the last one has as many outputs as the embedding has rows) writes its
  own text: tokens sampled autoregressively from its output distribution at temperature 1;
* a **tagger or classifier** with an embedding input gets token sequences drawn uniformly
  from its input alphabet;
* any other model gets :func:`rnnshrink.fidelity.probe_inputs`, and the description says so.

Every kind is seeded; another seed gives an independent, held-out draw.

References
----------
rnnshrink ``methods.md`` §8 (probes the tool makes itself: text sampled from the language
model, random sequences over a tagger's input alphabet).
"""

from dataclasses import dataclass

import numpy as np
from scipy.special import softmax

from .fidelity import dense_head, embedding_table, probe_inputs
from .model import Dense, DenseLayer, LSTMLayer
from .model.forward import run_layer
from .model.network import apply_dense, feeding_layer

# Words in the tensor names of a state dict's output layer (when more than one fits).
HEAD_NAMES = ("head", "decoder", "fc", "out", "classifier", "linear", "dense", "logit")


@dataclass(frozen=True)
class Probes:
    """Inputs to measure a model on, and what they are.

    Parameters
    ----------
    x : ndarray of shape (N, T, D)
        Inputs of the first LSTM layer (what :class:`~rnnshrink.transforms.Context` ``inputs``
        and :func:`~rnnshrink.model.network.trace_model` take).
    description : str
        One line for the summary.
    tokens : ndarray of int, shape (N, T), optional
        The token ids behind ``x`` when an embedding made it.
    kind : {"sampled", "uniform", "fallback", "given"}
        Text the model wrote, uniform tokens, :func:`~rnnshrink.fidelity.probe_inputs`, or the
        user's data.
    """

    x: np.ndarray
    description: str
    tokens: np.ndarray = None
    kind: str = "given"


def self_probes(model, count=64, steps=200, seed=0):
    """``count`` probe sequences of ``steps`` steps, the most realistic kind the file allows.

    Parameters
    ----------
    model : Model
    count, steps : int
    seed : int
        Another seed gives an independent draw (held-out probes).

    Returns
    -------
    Probes
    """
    first = model.lstm_layers[0]
    name, table = embedding_table(model, first)
    if table is None:
        x, description = probe_inputs(model, batch=count, steps=steps, seed=seed)
        return Probes(x, f"{description} (no embedding feeds the first LSTM)", kind="fallback")
    rng = np.random.default_rng(seed)
    table = np.asarray(table, dtype=np.float64)
    vocab = len(table)
    head = softmax_head(model)
    if head is not None and head.W.shape[0] == vocab and is_language_model(model):
        tokens = sample_text(model.lstm_layers, table, head, count, steps, rng)
        return Probes(table[tokens], f"{count} sequences of {steps} tokens sampled from the model "
                                     f"itself (temperature 1, seed {seed})", tokens, "sampled")
    tokens = rng.integers(0, vocab, size=(count, steps))
    return Probes(table[tokens], f"{count} uniform random token sequences of length {steps} over "
                                 f"the {vocab}-token input alphabet of {name} (seed {seed})",
                  tokens, "uniform")


def sample_text(layers, table, head, count, steps, rng):
    """Tokens written by an embedding → LSTM chain → Dense head language model, one step at a time.

    The first token of each sequence is uniform; every next one is drawn from the softmax of
    the head's outputs after the tokens before it (temperature 1).

    Parameters
    ----------
    layers : list of LSTMLayer
        A chain of single forward directions.
    table : ndarray of shape (vocab, D)
    head : DenseLayer of shape (vocab, out of the last layer)
    count, steps : int
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of int64, shape (count, steps)
    """
    tokens = np.empty((count, steps), np.int64)
    tokens[:, 0] = rng.integers(0, len(table), count)
    states = [None] * len(layers)
    for t in range(steps - 1):
        x = table[tokens[:, t]][:, None, :]
        for k, layer in enumerate(layers):
            x, h, c = run_layer(layer, x, initial_state=states[k])
            states[k] = (h, c)
        tokens[:, t + 1] = sample_categorical(softmax(apply_dense(head, x[:, 0]), axis=-1), rng)
    return tokens


def sample_categorical(p, rng):
    """One draw from each row's distribution ``p`` (..., classes); ndarray of int (...)."""
    u = rng.random(p.shape[:-1] + (1,))
    return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), p.shape[-1] - 1)


def softmax_head(model):
    """The Dense layer whose softmax is the model's output distribution, or None.

    The Dense layer reading the last LSTM (through identity layers) when its activation is
    linear or softmax (its pre-activation outputs are the logits); for a state dict, which does
    not say, the one 2-D float tensor as wide as the last LSTM's output that is not the
    embedding (by name among :data:`HEAD_NAMES` if several are), with its ``bias`` tensor.

    Returns
    -------
    DenseLayer or None
    """
    last = model.lstm_layers[-1]
    dense = dense_head(model, last)
    if dense is not None:
        linear = dense.activation is None or dense.activation.name == "linear"
        fits = dense.W.shape[1] == last.output_size
        return dense if linear and fits and dense.source.get("activation") in (
            None, "linear", "softmax") else None
    if model.topology == "known":
        return None
    embedding = embedding_table(model, model.lstm_layers[0])[0]
    found = [name for name, tensor in model.tensors.items()
             if tensor.data.ndim == 2 and tensor.data.dtype.kind == "f"
             and tensor.data.shape[1] == last.output_size and name != embedding]
    if len(found) > 1:
        found = [name for name in found if any(word in name.lower() for word in HEAD_NAMES)]
    if len(found) != 1:
        return None
    (name,) = found
    W = model.tensors[name].data
    bias = model.tensors.get(name.replace("weight", "bias")) if "weight" in name else None
    b = bias.data if bias is not None and bias.data.shape == (W.shape[0],) else None
    return DenseLayer(name.removesuffix(".weight"), Dense(W, W.dtype.name), b)


def chain_problem(model):
    """Why the LSTM layers do not form one chain (each fed the previous one's output), or None."""
    layers = model.lstm_layers
    for previous, layer in zip(layers, layers[1:]):
        if layer.inputs is None:
            fed = previous.output_size == layer.input_size
        else:
            fed = feeding_layer(model, layer, LSTMLayer) is previous
        if not fed:
            return f"LSTM layer {layer.name} is not fed by {previous.name}"
    return None


def is_language_model(model):
    """Whether the LSTM layers are one chain of single forward directions (so can write text)."""
    return chain_problem(model) is None and all(
        layer.num_directions == 1 and not layer.reverse_only for layer in model.lstm_layers)
