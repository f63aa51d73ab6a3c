"""Export a model's LSTM stack as a Keras 3 model file (legacy ``.h5`` full-model format).

The model
---------
A Functional model, every LSTM with ``return_sequences=True``::

    Input -> [Embedding] -> LSTM layers of model.lstm_layers, in order -> [Dense]

Two directions become ``Bidirectional(LSTM, merge_mode="concat")``; a reverse-only layer
``LSTM(go_backwards=True)``, allowed as the last layer only, because Keras returns its output in
reversed time order. When the topology is known, the ``EmbeddingLayer`` feeding the first LSTM
comes first (the input is then int32 token ids of shape ``(None, None)``, else float32
``(None, None, input)``) and the one ``DenseLayer`` reading the last LSTM is the head, applied
at every step. Activations are the IR's under their Keras names (sigmoid, tanh, relu, linear,
softsign, softplus, elu, and ``hard_sigmoid`` in its Keras 3 form ``x/6 + 0.5``). Plain and
reduced-width LSTMs only; every matrix is written as dense float32 (low-rank, sparse,
quantized and entropy-coded ones materialized and listed in the description).

The file
--------
What Keras 3's ``legacy_h5_format.save_model_to_hdf5`` writes: root attributes
``keras_version``, ``backend`` and ``model_config`` (the Functional config JSON in Keras 3's
serialization, with every layer's full config); ``model_weights`` with attributes
``layer_names``, ``backend``, ``keras_version``; a group per layer (created in name order) with
attribute ``weight_names`` = the variables' paths (``lstm/lstm_cell/kernel``,
``bidirectional/forward_lstm/lstm_cell/bias``, ``dense/kernel``, ``embedding/embeddings``) and
the datasets at those paths below it; an empty ``top_level_model_weights``. ``backend`` says
``tensorflow``: the layout is the same for every backend. ``keras.models.load_model`` reads it.

Refused: a projection (Keras has none: write the dense drop-in with ``rnnshrink compress
--format same`` instead), a cell clip, cell and hidden activations that differ, activations
without a Keras 3 name (Keras 2's ``hard_sigmoid`` ``0.2x + 0.5`` among them).

References
----------
Keras 3.15 ``keras/src/legacy/saving/legacy_h5_format.py``, ``layers/rnn/lstm.py``,
``layers/rnn/bidirectional.py``, ``activations/activations.py`` (``hard_sigmoid``).
"""

import json
import math
from typing import NamedTuple

import h5py
import numpy as np

from ..errors import OptionError
from ..model import HARD_SIGMOID_KERAS2, HARD_SIGMOID_KERAS3, Activation, DenseLayer, EmbeddingLayer
from .atomic import atomic_path
from .keras_h5 import ACTIVATIONS
from .keras_writer import lstm_arrays
from .exporting import lstm_stack, materialized

KERAS_VERSION = "3.15.1"  # the Keras 3 release whose legacy h5 saver this layout reproduces
BACKEND = "tensorflow"
_POLICY = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
           "registered_name": None}
_UNSET = ("kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
          "activity_regularizer", "kernel_constraint", "recurrent_constraint", "bias_constraint")


class _Layer(NamedTuple):
    """One Keras layer to write: its config entry, call kwargs, weights by variable path."""

    cls: str
    config: dict
    kwargs: dict
    weights: list  # of (variable path, ndarray)
    source: str  # the IR layer's name
    args: dict  # the main constructor arguments, for the description
    width: int  # features of its output


def export_keras(model, output):
    """Write the LSTM stack of ``model`` (with its embedding and head) as a Keras 3 ``.h5``.

    Parameters
    ----------
    model : Model
    output : str or os.PathLike
        Written atomically; an existing file is replaced.

    Returns
    -------
    dict
        ``input`` (name, shape, dtype); ``layers``: per Keras layer its ``name``, ``class``,
        the IR layer it comes from (``source``) and its main constructor ``args``;
        ``materialized``: the matrices written dense; ``notes``; ``snippet``.

    Raises
    ------
    OptionError
        No LSTM layer, layers that do not chain, or a layer Keras cannot express.
    """
    layers = lstm_stack(model)
    known = model.topology == "known"
    embedding = _embedding(model, layers[0]) if known else None
    head = _head(model, layers[-1]) if known else None
    notes, used = [], set()
    first = embedding or layers[0]
    wanted = first.inputs[0] if known and first.inputs and len(first.inputs) == 1 else None
    tokens = embedding is not None
    x = {"name": _name(wanted, "input_layer", used),
         "shape": [None, None] if tokens else [None, None, layers[0].input_size],
         "dtype": "int32" if tokens else "float32"}
    built = [_embedding_layer(embedding, used)] if embedding is not None else []
    built += [_lstm_layer(layer, used, layer is layers[-1], notes) for layer in layers]
    built += [_dense_layer(head, used, notes)] if head is not None else []
    config, weights, described, y = _functional(x, built)
    with atomic_path(output) as temporary:
        _write(temporary, config, weights)
    found = materialized(layers)
    if found:
        notes.append("Keras LSTM layers hold dense matrices only: the matrices listed under "
                     "'materialized' are written as dense float32")
    return {"input": x, "layers": described, "materialized": found, "notes": notes,
            "snippet": _snippet(output, x, y)}


def _functional(x, built):
    """The model config, the weights by layer name, the description and the output tensor."""
    entries = [{"class_name": "InputLayer", "name": x["name"], "inbound_nodes": [], "config": {
        "batch_shape": x["shape"], "dtype": x["dtype"], "sparse": False, "ragged": False,
        "name": x["name"], "optional": False}}]
    weights, described, previous = {x["name"]: []}, [], x
    for layer in built:
        name = layer.config["name"]
        call = {"args": [_keras_tensor(previous)], "kwargs": layer.kwargs}
        entries.append({"class_name": layer.cls, "config": layer.config, "name": name,
                        "inbound_nodes": [call]})
        weights[name] = layer.weights
        described.append({"name": name, "class": layer.cls, "source": layer.source,
                          "args": layer.args})
        previous = {"name": name, "shape": [None, None, layer.width], "dtype": "float32"}
    config = {"class_name": "Functional", "config": {
        "name": "rnnshrink", "trainable": True, "layers": entries,
        "input_layers": [x["name"], 0, 0], "output_layers": [previous["name"], 0, 0]}}
    return config, weights, described, previous


def _embedding(model, first):
    """The EmbeddingLayer that feeds ``first``, if any."""
    feeders = [layer for layer in model.layers if first.inputs == [layer.name]]
    found = feeders[0] if feeders else None
    fits = isinstance(found, EmbeddingLayer) and found.table.shape[1] == first.input_size
    return found if fits else None


def _head(model, last):
    """The one DenseLayer reading only ``last``, if any."""
    heads = [layer for layer in model.consumers(last.name) if isinstance(layer, DenseLayer)
             and layer.inputs == [last.name] and layer.W.shape[1] == last.output_size]
    return heads[0] if len(heads) == 1 else None


def _name(wanted, base, used):
    """``wanted`` if Keras accepts it and it is free, else ``base``, ``base_1``, ..."""
    name = wanted if wanted and "/" not in wanted and wanted not in used else base
    k = 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def _keras_activation(layer, role, activation):
    """The Keras 3 name of ``activation``, or OptionError naming the layer and role."""
    if activation.name == "hard_sigmoid":
        if all(math.isclose(getattr(activation, k), getattr(HARD_SIGMOID_KERAS3, k), rel_tol=1e-6)
               for k in ("alpha", "beta")):
            return "hard_sigmoid"
        keras2 = " (Keras 2's form)" if activation == HARD_SIGMOID_KERAS2 else ""
        raise OptionError(
            f"layer {layer}: {role} {activation.describe()}{keras2} has no Keras 3 name; Keras 3's "
            "hard_sigmoid is x/6+0.5")
    if activation.name in ACTIVATIONS and activation == Activation(activation.name):
        return activation.name
    raise OptionError(f"layer {layer}: {role} {activation.describe()} has no Keras equivalent")


def _lstm_layer(layer, used, last, notes):
    """The Keras ``LSTM`` or ``Bidirectional`` of one LSTM layer."""
    _check_lstm(layer, last)
    if layer.reverse_only:
        notes.append(f"layer {layer.name}: go_backwards=True; Keras returns its output (and the "
                     "head's) in reversed time order")
    settings = {
        "units": layer.hidden_size,
        "activation": _keras_activation(layer.name, "cell_activation", layer.cell_activation),
        "recurrent_activation": _keras_activation(layer.name, "gate_activation",
                                                  layer.gate_activation),
        "use_bias": any(d.bias_terms or np.any(d.b) for d in layer.directions),
    }
    arrays = [lstm_arrays(d) for d in layer.directions]
    args = {**settings, "return_sequences": True, "go_backwards": layer.reverse_only}
    if layer.num_directions == 1:
        name = _name(layer.name, "lstm", used)
        config = _lstm_config(name, settings, layer.reverse_only, False)
        cells = [f"{name}/lstm_cell"]
        cls, kwargs = "LSTM", {"training": False, "mask": None}
    else:
        name = _name(layer.name, "bidirectional", used)
        shape = {"input_shape": [None, None, layer.input_size]}
        inner = [{"module": "keras.layers", "class_name": "LSTM", "registered_name": None,
                  "config": _lstm_config(f"{side}_lstm", settings, side == "backward", True),
                  "build_config": shape} for side in ("forward", "backward")]
        config = {"name": name, "trainable": True, "dtype": _POLICY, "merge_mode": "concat",
                  "layer": inner[0], "backward_layer": inner[1]}
        cells = [f"{name}/{side}_lstm/lstm_cell" for side in ("forward", "backward")]
        cls, kwargs = "Bidirectional", {"mask": None}
        args["merge_mode"] = "concat"
    keys = ("kernel", "recurrent_kernel", "bias")[:3 if settings["use_bias"] else 2]
    weights = [(f"{cell}/{key}", values) for cell, found in zip(cells, arrays)
               for key, values in zip(keys, found)]
    return _Layer(cls, config, kwargs, weights, layer.name, args, layer.output_size)


def _check_lstm(layer, last):
    """OptionError for what a Keras LSTM cannot express (activations are checked by name)."""
    if layer.proj_size:
        raise OptionError(
            f"layer {layer.name}: a projection (proj_size={layer.proj_size}) has no Keras "
            "equivalent; write the dense drop-in instead (rnnshrink compress --format same)")
    if layer.clip is not None:
        raise OptionError(f"layer {layer.name}: Keras LSTM layers have no clip (clip={layer.clip})")
    if layer.cell_activation != layer.hidden_activation:
        raise OptionError(
            f"layer {layer.name}: Keras uses one activation for the cell and the output, but "
            f"cell_activation is {layer.cell_activation.describe()} and hidden_activation "
            f"{layer.hidden_activation.describe()}")
    if layer.reverse_only and not last:
        raise OptionError(
            f"layer {layer.name}: reverse_only becomes go_backwards, and Keras returns that "
            "output in reversed time order, so the next LSTM layer would read it reversed; "
            "only the last LSTM layer may be reverse-only")


def _lstm_config(name, settings, go_backwards, masked):
    """An LSTM's full config as Keras 3.15 serializes it (defaults for what the IR lacks)."""
    return {
        "name": name, "trainable": True, "dtype": _POLICY, "return_sequences": True,
        "return_state": False, "go_backwards": go_backwards, "stateful": False,
        "unroll": False, "zero_output_for_mask": masked, **settings,
        "kernel_initializer": _glorot(),
        "recurrent_initializer": _initializer("Orthogonal", {"seed": None, "gain": 1.0}),
        "bias_initializer": _initializer("Zeros", {}), "unit_forget_bias": True,
        **dict.fromkeys(_UNSET), "dropout": 0.0, "recurrent_dropout": 0.0, "seed": None,
    }


def _dense_layer(head, used, notes):
    """The Keras ``Dense`` head: kernel ``W.T`` (in, out), bias if the layer has one."""
    if head.activation is not None:
        activation = _keras_activation(head.name, "activation", head.activation)
    else:
        activation = head.source.get("activation") or "linear"
        if activation != "linear":
            notes.append(f"layer {head.name}: activation {activation!r} kept from the source "
                         "file (rnnshrink does not evaluate it)")
    name = _name(head.name, "dense", used)
    units = head.W.shape[0]
    settings = {"units": units, "activation": activation, "use_bias": head.b is not None}
    config = {"name": name, "trainable": True, "dtype": _POLICY, **settings,
              "kernel_initializer": _glorot(), "bias_initializer": _initializer("Zeros", {}),
              "kernel_regularizer": None, "bias_regularizer": None, "kernel_constraint": None,
              "bias_constraint": None, "quantization_config": None}
    arrays = [(f"{name}/kernel", head.W.materialize().T)]
    arrays += [(f"{name}/bias", np.asarray(head.b))] if head.b is not None else []
    return _Layer("Dense", config, {}, arrays, head.name, settings, units)


def _embedding_layer(embedding, used):
    """The Keras ``Embedding``: its table (vocab, dim) as ``embeddings``."""
    name = _name(embedding.name, "embedding", used)
    vocab, dim = embedding.table.shape
    settings = {"input_dim": vocab, "output_dim": dim}
    config = {"name": name, "trainable": True, "dtype": _POLICY, **settings,
              "embeddings_initializer": _initializer(
                  "RandomUniform", {"seed": None, "minval": -0.05, "maxval": 0.05}),
              "embeddings_regularizer": None, "activity_regularizer": None,
              "embeddings_constraint": None, "mask_zero": False, "quantization_config": None}
    arrays = [(f"{name}/embeddings", embedding.table)]
    return _Layer("Embedding", config, {}, arrays, embedding.name, settings, dim)


def _initializer(class_name, config):
    return {"module": "keras.initializers", "class_name": class_name, "config": config,
            "registered_name": None}


def _glorot():
    return _initializer("GlorotUniform", {"seed": None, "input_axes": None, "output_axes": None})


def _keras_tensor(tensor):
    return {"class_name": "__keras_tensor__", "config": {
        "shape": tensor["shape"], "dtype": tensor["dtype"],
        "keras_history": [tensor["name"], 0, 0]}}


def _write(path, config, weights):
    """The h5 file, attribute for attribute as Keras 3's legacy saver writes it."""
    with h5py.File(path, "w") as h5:
        h5.attrs["keras_version"] = KERAS_VERSION
        h5.attrs["backend"] = BACKEND
        h5.attrs["model_config"] = json.dumps(config).encode("utf8")
        root = h5.create_group("model_weights")
        root.attrs["layer_names"] = [name.encode("utf8") for name in weights]
        root.attrs["backend"] = BACKEND.encode("utf8")
        root.attrs["keras_version"] = KERAS_VERSION.encode("utf8")
        for name in sorted(weights):
            group = root.create_group(name)
            group.attrs["weight_names"] = [path.encode("utf8") for path, _ in weights[name]]
            for key, values in weights[name]:
                group.create_dataset(key, data=np.asarray(values, dtype=np.float32))
        root.create_group("top_level_model_weights").attrs["weight_names"] = []


def _snippet(output, x, y):
    kind = "int32 token ids" if x["dtype"] == "int32" else "float32"
    shape = ", ".join(["batch", "time"] + [str(size) for size in x["shape"][2:]])
    return (f"import keras\n\nmodel = keras.models.load_model({str(output)!r})\n"
            f"y = model.predict(x)  # x: {kind} ({shape}) -> (batch, time, {y['shape'][2]})\n")
