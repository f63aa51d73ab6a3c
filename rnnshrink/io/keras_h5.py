"""Keras checkpoints: HDF5 files of Keras 2, tf.keras and Keras 3, and the Keras 3 ``.keras`` zip.

The zip is read in memory, never extracted. Which layers a file holds, what feeds each and where
their datasets are (the legacy and keras3 layouts) is :mod:`rnnshrink.io.keras_config`.

Weights: LSTM kernel ``(D, 4u)`` -> ``W = kernel.T``, recurrent kernel ``(u, 4u)`` -> ``R``,
bias ``(4u,)``, gates i, f, c, o. CuDNNLSTM stores each gate block in cuDNN order and an ``8u``
bias (input half, recurrent half); it is converted as Keras's own loader does
(``_convert_rnn_weights`` in ``hdf5_format.py``). LSTM, Dense and Embedding weights are owned by
their layer objects; every other dataset is kept byte-exact in ``model.tensors`` under its HDF5
path. Without a config (weights-only files) only LSTM layers are recognised, by their shapes,
and the recurrent activation is Keras's default for the file's ``keras_version`` unless the
``recurrent_activation`` option says otherwise.
"""

import contextlib
import io
import json
import re
from typing import NamedTuple

import h5py
import numpy as np

from ..errors import InputError, OptionError
from ..model import (
    HARD_SIGMOID_KERAS2,
    HARD_SIGMOID_KERAS3,
    SIGMOID,
    TANH,
    Activation,
    Dense,
    DenseLayer,
    EmbeddingLayer,
    LSTMDirection,
    LSTMLayer,
    Model,
    OtherLayer,
    Tensor,
)
from . import ZIP_MAGIC
from .gates import to_canonical
from .h5_safe import link_names, open_h5
from .keras_config import Keras3, Legacy, attr_text, config_specs, dataset_path, list_attr, snake
from .zip_archive import Archive

WEIGHT_DTYPES = ("float16", "float32", "float64")
# Keras activation names rnnshrink evaluates under the same name ("hard_sigmoid" is by version).
ACTIVATIONS = ("tanh", "sigmoid", "relu", "linear", "softsign", "softplus", "elu")
RECURRENT_OPTION = ("sigmoid", "hard_sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3")
LSTM_CLASSES = ("LSTM", "CuDNNLSTM")


class _Source(NamedTuple):
    h5: h5py.File
    config: dict
    version: str
    backend: str
    container: str
    inner: str


def read(path, recurrent_activation=None, **options):
    """Read a Keras ``.h5`` / ``.weights.h5`` / ``.keras`` file into a Model.

    Parameters
    ----------
    path : pathlib.Path
    recurrent_activation : str, optional
        For weights-only files: one of :data:`RECURRENT_OPTION` (``hard_sigmoid`` takes the
        form of the file's Keras version). Ignored, with a note, when the file has a config.

    Raises
    ------
    InputError
        Truncated or non-Keras file, missing datasets, wrong shapes or dtypes.
    """
    if recurrent_activation is not None and recurrent_activation not in RECURRENT_OPTION:
        raise OptionError(
            f"recurrent_activation must be one of {', '.join(RECURRENT_OPTION)}, "
            f"got {recurrent_activation!r}"
        )
    try:
        with _open(path) as source:
            return _build(path, source, recurrent_activation)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError,
            IndexError) as error:  # h5py raises RuntimeError on damaged internals too
        raise InputError(path, f"unreadable Keras file ({type(error).__name__}: {error})") from None


@contextlib.contextmanager
def _open(path):
    with open(path, "rb") as f:
        zipped = f.read(4) == ZIP_MAGIC
    if zipped:
        with Archive(path) as archive:
            inner = _inner_name(path, archive)
            try:
                config = json.loads(archive.read("config.json"))
                meta = json.loads(archive.read("metadata.json")) if "metadata.json" in archive else {}
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
                raise InputError(path, f"corrupt .keras archive ({error})") from None
            data = archive.read(inner)
        with open_h5(path, io.BytesIO(data)) as h5:
            yield _Source(h5, config, meta.get("keras_version"), meta.get("backend"), "zip", inner)
        return
    with open_h5(path) as h5:
        attrs = h5.attrs
        config = json.loads(attr_text(attrs["model_config"])) if "model_config" in attrs else None
        version = attr_text(attrs["keras_version"]) if "keras_version" in attrs else None
        backend = attr_text(attrs["backend"]) if "backend" in attrs else None
        yield _Source(h5, config, version, backend, "h5", None)


def _inner_name(path, archive):
    names = archive.names
    if "model.weights.h5" in names:
        return "model.weights.h5"
    found = [n for n in names if n.endswith(".weights.h5")]
    if len(found) != 1:
        raise InputError(path, ".keras archive has no single .weights.h5 (sharded files are not read)")
    return found[0]


def _build(path, source, option):
    h5 = source.h5
    if "layers" in h5 and not list_attr(h5, "layer_names"):
        store, keras3 = Keras3(h5, source.config), True
    elif list_attr(h5.get("model_weights", h5), "layer_names"):
        store, keras3 = Legacy(path, h5), _version(source.version)[0] >= 3
    else:
        raise InputError(path, "HDF5 file is not a Keras model or weights file (no layer_names, no layers/)")
    notes = []
    if source.config is not None:
        specs, topology = config_specs(source.config), "known"
        gate = None
        if option:
            notes.append(f"recurrent_activation={option} ignored: the file's layer config gives it")
    else:
        specs, topology = store.guess_specs(), "unknown"
        gate = _default_gate(source.version, keras3, option, notes)
    layers, owned = [], set()
    for spec in specs:
        layer = _layer(path, spec, store, keras3, gate, notes)
        layers.append(layer)
        owned.update(_owned_paths(layer))
    tensors = {}
    for name in link_names(h5):  # not visititems: h5py hides a callback's exception
        if isinstance(h5.get(name, getlink=True), h5py.HardLink):
            _keep(name, h5.get(name), owned, tensors)
    return Model(
        layers=layers,
        tensors=tensors,
        format="keras-zip" if source.container == "zip" else "keras-h5",
        producer=_producer(source, keras3),
        topology=topology,
        notes=notes,
        meta={"keras": {"container": source.container, "inner": source.inner}},
    )


def _keep(name, obj, owned, tensors):
    if isinstance(obj, h5py.Dataset) and name not in owned:
        tensors[name] = Tensor(name, np.asarray(obj[()]))


def _owned_paths(layer):
    source = layer.source
    paths = [p for d in source.get("directions", []) for p in d.values() if isinstance(p, str)]
    return set(paths + [source[k] for k in ("kernel", "bias", "embeddings") if source.get(k)])


def _producer(source, keras3):
    if source.version is None:
        return "Keras 3 (.weights.h5 stores no version)" if keras3 else "Keras (version not stored)"
    backend = f" ({source.backend})" if source.backend else ""
    return f"Keras {source.version}{backend}"


def _default_gate(version, keras3, option, notes):
    """The recurrent activation of a weights-only file: option, else Keras's default by version."""
    hard = HARD_SIGMOID_KERAS3 if keras3 else HARD_SIGMOID_KERAS2
    named = {"sigmoid": SIGMOID, "hard_sigmoid": hard,
             "hard_sigmoid_keras2": HARD_SIGMOID_KERAS2, "hard_sigmoid_keras3": HARD_SIGMOID_KERAS3}
    if option:
        gate = named[option]
        notes.append(f"weights-only file: recurrent activation {gate.describe()} set by option")
    else:
        old = not keras3 and version is not None and _version(version) < (2, 3)
        gate = HARD_SIGMOID_KERAS2 if old else SIGMOID
        notes.append(
            f"weights-only file: recurrent activation {gate.describe()} is the default of Keras "
            f"{version or ('3' if keras3 else 'of unknown version')} (override with "
            "recurrent_activation=...); activation tanh and go_backwards=False assumed"
        )
    notes.append("weights-only file: no model config, so which layer feeds which is unknown")
    return gate


def _layer(path, spec, store, keras3, gate, notes):
    """The IR layer of one Keras layer; LSTMs are strict, Dense / Embedding fall back to Other."""
    cls, conf = spec.cls, spec.config
    wrapped = (conf.get("layer") or {}) if cls in ("Bidirectional", "TimeDistributed") else {}
    if cls in LSTM_CLASSES or (cls == "Bidirectional" and wrapped.get("class_name") in LSTM_CLASSES):
        return _lstm_layer(path, spec, store.datasets(spec.name, cls), keras3, gate, notes)
    datasets = store.datasets(spec.name, cls)
    plain = all(d.dtype.name in WEIGHT_DTYPES for d in datasets)
    if cls == "Embedding" and plain and len(datasets) == 1:
        return EmbeddingLayer(spec.name, datasets[0][()], spec.inputs,
                              {"embeddings": dataset_path(datasets[0])})
    if plain and (cls == "Dense" or (cls == "TimeDistributed" and wrapped.get("class_name") == "Dense")):
        layer = _dense_layer(spec, datasets, keras3, wrapped.get("config") or conf)
        if layer is not None:
            return layer
    if _contains_lstm(conf):
        raise InputError(path, f"layer {spec.name} ({cls}) holds an LSTM rnnshrink cannot read "
                               "(only top-level LSTM, CuDNNLSTM and Bidirectional(LSTM) layers)")
    return OtherLayer(spec.name, snake(cls) if cls else "unknown", spec.inputs, {"class_name": cls})


def _lstm_layer(path, spec, datasets, keras3, gate, notes):
    conf, weights_only = spec.config, gate is not None
    bidirectional = spec.cls == "Bidirectional"
    inner = conf["layer"] if bidirectional else {"class_name": spec.cls, "config": conf}
    inner_conf = inner.get("config") or {}
    if bidirectional and conf.get("merge_mode", "concat") != "concat":
        raise InputError(path, f"layer {spec.name}: Bidirectional merge_mode "
                               f"{conf.get('merge_mode')!r} is not supported (only 'concat')")
    go_backwards = bool(inner_conf.get("go_backwards", False))
    if bidirectional and go_backwards:
        raise InputError(path, f"layer {spec.name}: Bidirectional over a go_backwards LSTM is not supported")
    cudnn = inner["class_name"] == "CuDNNLSTM"
    if cudnn or weights_only:
        gate_act, cell_act = (SIGMOID, TANH) if cudnn else (gate, TANH)
    else:
        names = [inner_conf.get("recurrent_activation", "sigmoid"), inner_conf.get("activation", "tanh")]
        gate_act, cell_act = (_activation(n, keras3) for n in names)
        if gate_act is None or cell_act is None:
            raise InputError(path, f"layer {spec.name}: activations {names} are not supported")
        backward = (conf.get("backward_layer") or {}).get("config")
        if backward and any(backward.get(k) != inner_conf.get(k) for k in ("activation", "recurrent_activation")):
            raise InputError(path, f"layer {spec.name}: forward and backward activations differ")
    n_dirs = 2 if bidirectional else 1
    per_dir = len(datasets) // n_dirs
    if per_dir not in (2, 3) or per_dir * n_dirs != len(datasets) or (cudnn and per_dir != 3):
        raise InputError(path, f"layer {spec.name}: expected kernel, recurrent kernel and bias "
                               f"datasets, found {len(datasets)} ({', '.join(map(dataset_path, datasets))})")
    if not weights_only and not cudnn and inner_conf.get("use_bias", True) != (per_dir == 3):
        raise InputError(path, f"layer {spec.name}: use_bias={inner_conf.get('use_bias')} "
                               f"but {per_dir} datasets per direction")
    units = inner_conf.get("units")
    directions, sources = [], []
    for k in range(n_dirs):
        direction, source = _direction(path, spec.name, datasets[k * per_dir:(k + 1) * per_dir], cudnn, units)
        directions.append(direction)
        sources.append(source)
    if go_backwards:
        notes.append(f"layer {spec.name}: Keras go_backwards returns its output in reversed time "
                     "order; the IR's reverse_only flips it back (ONNX convention)")
    return LSTMLayer(
        name=spec.name, directions=directions, gate_activation=gate_act,
        cell_activation=cell_act, hidden_activation=cell_act, reverse_only=go_backwards,
        inputs=spec.inputs,
        source={"class_name": spec.cls, "layout": "cudnn" if cudnn else "keras",
                "directions": sources, "go_backwards": go_backwards},
    )


def _direction(path, name, datasets, cudnn, units):
    """One direction from its datasets: kernel (D, 4u), recurrent kernel (u, 4u), bias."""
    arrays = [_array(path, name, d) for d in datasets]
    kernel, recurrent = arrays[0], arrays[1]
    u = recurrent.shape[0] if recurrent.ndim == 2 else -1
    shapes = [a.shape for a in arrays]
    want = [(kernel.shape[0] if kernel.ndim == 2 else "D", 4 * u), (u, 4 * u), ((8 if cudnn else 4) * u,)]
    if any(s != w for s, w in zip(shapes, want)) or (units is not None and u != units):
        raise InputError(path, f"layer {name}: LSTM weight shapes {shapes} do not match "
                               f"kernel (D, 4u), recurrent kernel (u, 4u), bias ({'8u' if cudnn else '4u'},)"
                               + (f" with units={units}" if units is not None else ""))
    if cudnn:
        # per gate block: kernel k -> k.T reshaped to k.shape in Fortran order; recurrent k -> k.T
        kernel = np.hstack([k.T.reshape(k.shape, order="F") for k in np.hsplit(kernel, 4)])
        recurrent = np.hstack([k.T for k in np.hsplit(recurrent, 4)])
    if len(arrays) == 3:
        bias = arrays[2][:4 * u] + arrays[2][4 * u:] if cudnn else arrays[2]
    else:
        bias = np.zeros(4 * u, kernel.dtype)
    direction = LSTMDirection(
        W=Dense(to_canonical(kernel.T, "keras"), stored_dtype=kernel.dtype.name),
        R=Dense(to_canonical(recurrent.T, "keras"), stored_dtype=recurrent.dtype.name),
        b=to_canonical(bias, "keras"),
        bias_terms=(2 if cudnn else 1) if len(arrays) == 3 else 0,
        bias_dtype=arrays[-1].dtype.name,
    )
    keys = ("kernel", "recurrent_kernel", "bias")
    source = {key: dataset_path(d) for key, d in zip(keys, datasets)}
    if cudnn:
        source["cudnn_bias"] = arrays[2]
    return direction, source


def _dense_layer(spec, datasets, keras3, conf):
    """A DenseLayer (W = kernel.T), or None when the datasets are not one kernel and a bias."""
    kernel, bias = (datasets + [None])[:2] if len(datasets) in (1, 2) else (None, None)
    if kernel is None or kernel.ndim != 2 or (bias is not None and bias.shape != (kernel.shape[1],)):
        return None
    name = conf.get("activation")
    return DenseLayer(
        spec.name, Dense(kernel[()].T, stored_dtype=kernel.dtype.name),
        None if bias is None else bias[()],
        bias_dtype=(kernel if bias is None else bias).dtype.name,
        activation=_activation(name, keras3),
        inputs=spec.inputs,
        source={"class_name": spec.cls, "activation": name, "kernel": dataset_path(kernel),
                "bias": None if bias is None else dataset_path(bias)},
    )


def _activation(keras_name, keras3):
    """The Activation of a Keras activation name, None for one rnnshrink does not evaluate."""
    if keras_name == "hard_sigmoid":
        return HARD_SIGMOID_KERAS3 if keras3 else HARD_SIGMOID_KERAS2
    return Activation(keras_name) if keras_name in ACTIVATIONS else None


def _array(path, name, dataset):
    if dataset.dtype.name not in WEIGHT_DTYPES:
        raise InputError(path, f"layer {name}: dataset {dataset_path(dataset)} has dtype {dataset.dtype}, "
                               f"expected one of {', '.join(WEIGHT_DTYPES)}")
    return dataset[()]


def _contains_lstm(item):
    if isinstance(item, dict):
        lstm = item.get("class_name") in LSTM_CLASSES + ("LSTMCell",)
        return lstm or any(map(_contains_lstm, item.values()))
    return isinstance(item, list) and any(map(_contains_lstm, item))


def _version(text):
    match = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(match[1]), int(match[2])) if match else (0, 0)

