"""What every exporter (ONNX, PyTorch, Keras) checks and reports about the LSTM stack it writes."""

import dataclasses

import numpy as np

from ..errors import OptionError
from ..model import Dense
from ..model.coded import EntropyCoded
from ..model.weights import LowRank


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


def repacked_note(layers):
    """The note of an exporter that re-packs entropy-coded matrices at fixed width (its runtime
    cannot decode the entropy code), or None when there are none.

    Parameters
    ----------
    layers : list of LSTMLayer

    Returns
    -------
    str or None
        How many were re-packed exactly (their own codes, see
        :meth:`~rnnshrink.model.coded.EntropyCoded.fixed_width`) and how many re-quantized at
        8 bits per row, with the largest relative weight error ``‖Ŵ - W‖_F / ‖W‖_F`` of those.
    """
    coded, pending = [], [m for layer in layers for d in layer.directions
                          for m in d.matrices.values()]
    while pending:
        weight = pending.pop()
        if isinstance(weight, LowRank):
            pending += [weight.U, weight.V]
        elif isinstance(weight, EntropyCoded):
            coded.append(weight)
    if not coded:
        return None
    errors = []
    for weight in coded:
        quantized, exact = weight.fixed_width()
        if not exact:
            values = weight.materialize()
            errors.append(np.linalg.norm(quantized.materialize() - values)
                          / max(np.linalg.norm(values), np.finfo(float).tiny))
    note = (f"{len(coded)} entropy-coded matrices re-packed at fixed width for the runtime, "
            f"which cannot decode the entropy code: {len(coded) - len(errors)} as their own "
            "codes (int8 / int4, float32 row steps)")
    if errors:
        note += (f", {len(errors)} re-quantized at int8 per row (relative weight error up to "
                 f"{max(errors):.1e})")
    return note
