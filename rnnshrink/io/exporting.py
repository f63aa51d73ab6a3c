"""What every exporter (ONNX, PyTorch, Keras) checks and reports about the LSTM stack it writes."""

import dataclasses

import numpy as np

from ..errors import OptionError
from ..model import Dense


def lstm_stack(model):
    """The LSTM layers of ``model`` in order, checked to chain (each reads the previous output).

    Raises
    ------
    OptionError
        No LSTM layer, or a layer whose input width is not the previous layer's output width.
    """
    layers = model.lstm_layers
    if not layers:
        raise OptionError("the model has no LSTM layer to export")
    for before, after in zip(layers, layers[1:]):
        if after.input_size != before.output_size:
            raise OptionError(
                f"LSTM layers {before.name} and {after.name} do not chain: {before.name} outputs "
                f"{before.output_size} features, {after.name} expects {after.input_size}")
    return layers


def materialized(layers):
    """One line per matrix that an exporter writes as dense float32 but that is stored otherwise.

    Parameters
    ----------
    layers : list of LSTMLayer

    Returns
    -------
    list of str
        E.g. ``"lstm_l1 forward R: lowrank (rank=32) -> dense float32"``.
    """
    found = []
    for layer in layers:
        for k, direction in enumerate(layer.directions):
            side = "forward" if k == 0 and not layer.reverse_only else "reverse"
            for role, weight in direction.matrices.items():
                details = weight.describe()
                if details["kind"] == "dense" and details["dtype"] == "float32":
                    continue
                if "blocks" in details:  # gated: i/f/g/o each zero, diag or full
                    details["blocks"] = "/".join(b if isinstance(b, str) else "full"
                                                 for b in details["blocks"].values())
                shown = ", ".join(f"{key}={value}" for key, value in details.items()
                                  if key not in ("kind", "shape", "U", "V"))
                found.append(f"{layer.name} {side} {role}: {details['kind']} ({shown}) "
                             "-> dense float32")
    return found


def standard_lstm(layer):
    """``layer`` as the standard LSTM it is: a Slim variant's gated W and R materialized to
    dense float32 (zeros where the variant has no block; its fixed gates are in the bias)."""
    if layer.variant == "LSTM":
        return layer
    directions = [dataclasses.replace(d, W=Dense(d.W.materialize(np.float32)),
                                      R=Dense(d.R.materialize(np.float32)), variant="LSTM")
                  for d in layer.directions]
    return dataclasses.replace(layer, directions=directions)
