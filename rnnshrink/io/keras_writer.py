"""Write a model read from a Keras file back as a drop-in copy of that file.

The output is the input file with the weights of the IR's layers written over their datasets
in place: LSTM kernels, recurrent kernels and biases (materialized, in Keras layout and the
dataset's own dtype), Dense kernels and biases and Embedding tables (the layers own them, see
:mod:`rnnshrink.io.keras_h5`). Every other byte — groups, attributes, ``model_config``, optimizer
state, every pass-through dataset — is the original file's; for a ``.keras`` zip every other
member is copied unchanged and only the inner ``.weights.h5`` is rewritten. Layer sizes cannot
change: Keras would rebuild the layers from the unchanged config.
"""

import copy
import io
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError, OptionError
from ..model import DenseLayer, EmbeddingLayer, LSTMLayer
from .atomic import atomic_path
from .gates import from_canonical


def write(model, output_path):
    """Write ``model`` as a copy of the Keras file it was read from, with its weights.

    Parameters
    ----------
    model : Model
        Read by :func:`rnnshrink.io.keras_h5.read` (``model.path`` must still be readable).
    output_path : str or os.PathLike

    Raises
    ------
    OptionError
        The model was not read from a Keras file, or its layers no longer fit the file
        (changed sizes, a projection, a bias where the file has none).
    InputError
        The original file can no longer be read.
    """
    keras = model.meta.get("keras")
    if keras is None:
        raise OptionError(f"{output_path}: the Keras writer needs a model read from a Keras file")
    updates = _updates(model)
    source = Path(model.path)
    if not source.is_file():
        raise InputError(source, "the original Keras file is needed to write a drop-in copy")
    with atomic_path(output_path) as temporary:
        if keras["container"] == "zip":
            _write_zip(source, temporary, keras["inner"], updates)
        else:
            shutil.copyfile(source, temporary)
            with h5py.File(temporary, "r+") as h5:
                _overwrite(h5, updates)


def _write_zip(source, target, inner, updates):
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename == inner:
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "r+") as h5:
                    _overwrite(h5, updates)
                data = buffer.getvalue()
            out.writestr(copy.copy(info), data)


def _overwrite(h5, updates):
    for name, values in updates.items():
        dataset = h5[name]
        if dataset.shape != values.shape:
            raise OptionError(
                f"dataset {name}: the model has shape {values.shape}, the Keras file "
                f"{dataset.shape}; the Keras writer cannot change layer sizes"
            )
        dataset[...] = values.astype(dataset.dtype)


def _updates(model):
    """Every dataset the model's layers own, by HDF5 path, in Keras layout."""
    updates = {}
    for layer in model.layers:
        if isinstance(layer, LSTMLayer):
            for direction, source in zip(layer.directions, layer.source["directions"]):
                updates.update(_lstm_direction(layer, direction, source))
        elif isinstance(layer, DenseLayer):
            updates[layer.source["kernel"]] = layer.W.materialize().T
            if layer.source.get("bias"):
                updates[layer.source["bias"]] = np.asarray(layer.b)
        elif isinstance(layer, EmbeddingLayer):
            updates[layer.source["embeddings"]] = np.asarray(layer.table)
    return updates


def lstm_arrays(direction):
    """Kernel (D, 4u), recurrent kernel (u, 4u) and bias (4u,) of one direction, Keras layout.

    The matrices are materialized (float64); a projection is the caller's to refuse.
    """
    return (from_canonical(direction.W.materialize(), "keras").T,
            from_canonical(direction.R.materialize(), "keras").T,
            from_canonical(direction.b, "keras"))


def _lstm_direction(layer, direction, source):
    """Kernel (D, 4u), recurrent kernel (u, 4u) and bias of one direction, by dataset path."""
    if direction.proj is not None:
        raise OptionError(f"layer {layer.name}: Keras LSTM layers have no projection")
    kernel, recurrent, bias = lstm_arrays(direction)
    if source.get("cudnn_bias") is not None:
        # inverse of Keras's CuDNNLSTM conversion: per gate block k -> k.T reshaped in C order
        kernel = np.hstack([k.T.reshape(k.shape, order="C") for k in np.hsplit(kernel, 4)])
        recurrent = np.hstack([k.T for k in np.hsplit(recurrent, 4)])
        original = source["cudnn_bias"]
        half = original.size // 2
        if not np.array_equal(bias, original[:half] + original[half:]):
            original = np.concatenate([bias - original[half:], original[half:]])
        bias = original
    found = {source["kernel"]: kernel, source["recurrent_kernel"]: recurrent}
    if "bias" in source:
        found[source["bias"]] = bias
    elif np.any(bias):
        raise OptionError(f"layer {layer.name}: the Keras layer has use_bias=False, the model a bias")
    return found
