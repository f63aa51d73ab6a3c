"""Which layers a Keras file holds, what feeds each, and where each keeps its datasets.

A layer is a spec (name, class name, config, input layer names), read from the ``model_config``
JSON when the file has one (Keras 2 ``inbound_nodes`` lists and Keras 3 node dicts alike), else
guessed from the weight shapes of a weights-only file. :mod:`rnnshrink.io.keras_h5` turns specs
and their datasets into IR layers.

Layouts
-------
legacy
    ``model.save("x.h5")`` (weights under ``model_weights/``, ``model_config`` JSON in the root
    attributes) and ``save_weights("x.h5")`` (the same groups at the root, no config) of Keras 2,
    tf.keras and Keras 3. The attribute ``layer_names`` lists the layer groups, each group's
    ``weight_names`` its datasets in ``get_weights()`` order.
keras3
    ``save_weights("x.weights.h5")`` and the ``model.weights.h5`` inside a ``.keras`` zip:
    ``layers/<key>/cell/vars/0, 1, 2`` (kernel, recurrent kernel, bias), ``forward_layer`` /
    ``backward_layer`` for Bidirectional. ``<key>`` is the snake-case class name made unique,
    mapped to the layer by the ``name`` attribute of its ``vars`` group (or, in files without it,
    by replaying Keras's naming).
"""

import re
from typing import NamedTuple

import h5py
import numpy as np

from ..errors import InputError

# keras3 layout: where each layer class keeps its variables, below layers/<key>.
KERAS3_VARS = {
    "LSTM": ("cell/vars",),
    "Bidirectional": ("forward_layer/cell/vars", "backward_layer/cell/vars"),
    "Dense": ("vars",),
    "TimeDistributed": ("layer/vars",),
    "Embedding": ("vars",),
}


class _Spec(NamedTuple):
    name: str
    cls: str
    config: dict
    inputs: list


def config_specs(config):
    """The layer specs of a ``model_config``, in its order; a Sequential chains them."""
    body = config.get("config")
    layers = body if isinstance(body, list) else body["layers"]
    sequential = config.get("class_name") == "Sequential"
    specs, previous = [], None
    for entry in layers:
        conf = entry["config"]
        name = entry.get("name") or conf["name"]
        if sequential:
            inputs = [previous] if previous else []
        else:
            inputs = _inbound(entry.get("inbound_nodes") or [])
        specs.append(_Spec(name, entry["class_name"], conf, inputs))
        previous = name
    return specs


def _inbound(nodes):
    """Layer names feeding a layer, from Keras 2 ``[[name, i, j, {}]]`` or Keras 3 node dicts."""
    names = []

    def walk(item):
        if isinstance(item, dict):
            config = item.get("config")
            history = config.get("keras_history") if isinstance(config, dict) else None
            if isinstance(history, list):
                names.append(history[0])
            else:
                for value in item.values():
                    walk(value)
        elif isinstance(item, list):
            if len(item) >= 3 and isinstance(item[0], str) and isinstance(item[1], int):
                names.append(item[0])
            else:
                for value in item:
                    walk(value)

    walk(nodes)
    return list(dict.fromkeys(names))


class Legacy:
    """``[model_weights/]<layer>/<weight_name>`` with ``layer_names`` / ``weight_names`` attrs."""

    def __init__(self, path, h5):
        self.path = path
        self.root = h5["model_weights"] if "model_weights" in h5 else h5

    def datasets(self, name, cls=None):
        if name not in self.root:
            return []
        group = self.root[name]
        found = []
        for weight in list_attr(group, "weight_names"):
            if weight not in group or not isinstance(group[weight], h5py.Dataset):
                raise InputError(self.path, f"layer {name}: dataset {weight} listed in weight_names is missing")
            found.append(group[weight])
        return found

    def guess_specs(self):
        return [_guess_spec(n, self.datasets(n), n) for n in list_attr(self.root, "layer_names")]


class Keras3:
    """``layers/<key>/.../vars/<n>``: the Keras 3 ``.weights.h5`` layout."""

    def __init__(self, h5, config):
        self.layers = h5["layers"]
        self.keys = {}
        by_name = {}
        for key, group in self.layers.items():
            named = group["vars"].attrs.get("name") if "vars" in group else None
            if named is not None:
                by_name[attr_text(named)] = key
        if config is not None:
            used = {}
            sequential = config.get("class_name") == "Sequential"
            for spec in config_specs(config):
                if not (sequential and spec.cls == "InputLayer"):
                    key = _unique(snake(spec.cls), used)
                    self.keys[spec.name] = by_name.get(spec.name, key)
        else:
            named = {key: name for name, key in by_name.items()}
            self.keys = {named.get(key, key): key for key in self.layers}

    def datasets(self, name, cls):
        key = self.keys.get(name)
        found = []
        for sub in KERAS3_VARS.get(cls, ("vars",)):
            group = self.layers.get(f"{key}/{sub}") if key is not None else None
            if group is None:
                continue
            found += [group[n] for n in sorted(group, key=int) if isinstance(group[n], h5py.Dataset)]
        return found

    def guess_specs(self):
        specs = []
        for name, key in self.keys.items():
            cls = "Bidirectional" if "forward_layer" in self.layers[key] else "LSTM"
            specs.append(_guess_spec(name, self.datasets(name, cls), key))
        return specs


def _guess_spec(name, datasets, key):
    """A weights-only layer recognised by its weight shapes: LSTM, CuDNNLSTM, Bidirectional.

    A layer that Keras named as an LSTM (``key`` like ``lstm_2``) stays one even when its shapes
    do not fit, so that the LSTM reader reports what is wrong.
    """
    shapes = [d.shape for d in datasets]

    def lstm(group):
        if len(group) not in (2, 3) or len(group[0]) != 2 or len(group[1]) != 2:
            return None
        u = group[1][0]
        if group[0][1] != 4 * u or group[1][1] != 4 * u:
            return None
        if len(group) == 2 or group[2] == (4 * u,):
            return "LSTM"
        return "CuDNNLSTM" if group[2] == (8 * u,) else None

    single = lstm(shapes)
    if single:
        return _Spec(name, single, {}, None)
    half = len(shapes) // 2
    paths = [dataset_path(d) for d in datasets]
    inner = lstm(shapes[:half]) if len(shapes) in (4, 6) else None
    if inner and lstm(shapes[half:]) == inner and "forward" in paths[0] and "backward" in paths[half]:
        return _Spec(name, "Bidirectional", {"layer": {"class_name": inner, "config": {}}}, None)
    return _Spec(name, "LSTM" if re.fullmatch(r"(cu_dnn)?lstm(_\d+)?", key) else None, {}, None)


def list_attr(group, key):
    """A list attribute, joined from ``key0, key1, ...`` when Keras split it for size."""
    if key in group.attrs:
        values = list(np.atleast_1d(group.attrs[key]))
    else:
        values, k = [], 0
        while f"{key}{k}" in group.attrs:
            values += list(np.atleast_1d(group.attrs[f"{key}{k}"]))
            k += 1
    return [attr_text(v) for v in values]


def attr_text(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def dataset_path(dataset):
    return dataset.name.lstrip("/")


def snake(name):
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _unique(name, used):
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name
