"""Running a whole model's LSTM layers on the inputs its topology says they get.

Used for fidelity figures (:mod:`rnnshrink.fidelity`) and by data-aware transforms, which
need the inputs and states each layer actually sees on calibration data.
"""

import numpy as np

from .forward import run_layer
from .ir import LSTMLayer, OtherLayer

# layer kinds that pass their input through unchanged at inference
IDENTITY_KINDS = ("dropout", "identity", "masking", "spatialdropout", "gaussian")


def is_identity(layer):
    """Whether ``layer`` passes its input through unchanged at inference (Dropout, ...)."""
    return isinstance(layer, OtherLayer) and layer.kind.lower().startswith(IDENTITY_KINDS)


def feeding_layer(model, layer, kind):
    """The layer of type ``kind`` feeding ``layer`` (through identity layers), if the file says."""
    names = list(layer.inputs or ())
    while names:
        try:
            candidate = model.layer(names.pop())
        except KeyError:
            continue
        if isinstance(candidate, kind):
            return candidate
        if is_identity(candidate):
            names.extend(candidate.inputs or ())
    return None


def consumers_through_identity(model, name):
    """The layers reading ``name``'s output, looking through identity layers."""
    for consumer in model.consumers(name):
        if is_identity(consumer):
            yield from consumers_through_identity(model, consumer.name)
        else:
            yield consumer


def trace_model(model, x, seed=0, layer_inputs=None, numerics=None):
    """Run every LSTM layer of ``model``, each on the input the file says it gets.

    A layer fed by an LSTM layer gets that layer's output sequence; the first layer gets
    ``x``; a layer with another input gets seeded normal inputs of its width (the same for any
    model with the same layer widths). Where the file does not say (``inputs`` None), a layer
    is fed the previous LSTM layer's output when the widths agree. A layer named in
    ``layer_inputs`` gets those inputs instead (the user's calibration data).

    Parameters
    ----------
    model : Model
    x : ndarray of shape (batch, time, input of the first LSTM layer)
    seed : int
    layer_inputs : dict of str to ndarray of shape (batch, time, input of that layer), optional
        Defaults to ``x.layer_inputs`` when ``x`` has one
        (:class:`rnnshrink.fidelity.CalibrationInputs`).
    numerics : object, optional
        The arithmetic the layers run with (see :func:`rnnshrink.model.forward.run_layer`);
        float when omitted.

    Returns
    -------
    dict of str to tuple (inputs, y, h, c)
        Per LSTM layer name: the input sequence it ran on and :func:`run_layer`'s result.
    """
    if layer_inputs is None:
        layer_inputs = getattr(x, "layer_inputs", None) or {}
    traces = {}
    previous = None
    for index, layer in enumerate(model.lstm_layers):
        if layer.inputs is not None:
            feeder = feeding_layer(model, layer, LSTMLayer)
        else:
            feeder = previous if previous is not None and previous.output_size == layer.input_size else None
        if layer.name in layer_inputs:
            inputs = np.asarray(layer_inputs[layer.name])
        elif feeder is not None:
            inputs = traces[feeder.name][1]
        elif previous is None:
            inputs = x
        else:
            rng = np.random.default_rng(seed + 1000 + index)
            inputs = rng.standard_normal(x.shape[:2] + (layer.input_size,))
        traces[layer.name] = (inputs, *run_layer(layer, inputs, numerics=numerics))
        previous = layer
    return traces


def apply_dense(layer, y):
    """A :class:`DenseLayer`'s pre-activation outputs ``W y + b`` on ``y`` (..., in); (..., out)."""
    out = layer.W.operator()(y)
    return out if layer.b is None else out + layer.b


def run_model(model, x, seed=0):
    """:func:`trace_model` without the inputs: per LSTM layer name, ``(y, h, c)``."""
    return {name: trace[1:] for name, trace in trace_model(model, x, seed).items()}
