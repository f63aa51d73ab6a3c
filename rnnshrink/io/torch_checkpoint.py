"""PyTorch checkpoints and state dicts <-> the IR.

A state dict names its tensors, not its layers: ``{module}weight_ih_l{k}[_reverse]``,
``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` and ``weight_hr_l{k}`` (``proj_size``)
are layer ``k`` of an ``nn.LSTM`` (named ``{module}_l{k}``, fed by layer ``k - 1``);
``{module}weight_ih`` / ``weight_hh`` / ``bias_ih`` / ``bias_hh`` are an ``nn.LSTMCell``
(named ``{module}``). PyTorch's gate order i, f, g, o is the canonical one. The IR folds the two
biases as ``b_ih + b_hh`` in float64 and keeps both originals in ``source``, so the writer
restores ``b_ih = b - b_hh`` exactly. Every other tensor (embeddings, ``nn.Linear`` heads,
optimizer state) is kept byte-exact in ``model.tensors``: a state dict does not say which
layer consumes it.

:func:`state_dict_to_model` and :func:`model_to_state_dict` are the one conversion between a
name -> tensor mapping and the IR; :mod:`rnnshrink.io.safetensors_file` uses them too.

References
----------
PyTorch ``nn.LSTM`` and ``nn.LSTMCell`` documentation (parameter names and shapes).
"""

import re
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, OptionError
from ..model import Dense, LSTMDirection, LSTMLayer, Model, Tensor
from .atomic import atomic_path
from .gates import from_canonical, to_canonical
from .torch_pickle import StoredTensor, load_state
from .torch_writer import save_state

_KEY = re.compile(
    r"^(?P<module>(?:.*\.)?)(?P<role>weight_ih|weight_hh|weight_hr|bias_ih|bias_hh)"
    r"(?:_l(?P<layer>\d+)(?P<reverse>_reverse)?)?$"
)
# state dict role -> IR role, in the order nn.LSTM lists its parameters
_ROLES = {"weight_ih": "W", "weight_hh": "R", "bias_ih": "b_ih", "bias_hh": "b_hh",
          "weight_hr": "proj"}
_NESTED = ("state_dict", "model_state_dict", "model", "net", "module", "network")
_WRAPPERS = ("module.", "_orig_mod.")  # (Distributed)DataParallel, torch.compile
_FLOATS = ("float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True)
class TensorSlot:
    """Where a tensor sat in the checkpoint; ``model.meta["torch_tree"]`` holds these."""

    name: str
    requires_grad: bool = False
    parameter: bool = False


def read(path, **options):
    """Read a ``torch.save`` checkpoint (zip or legacy format) into a :class:`Model`.

    The state dict is the checkpoint itself or a dict inside it (keys of :data:`_NESTED`
    first). Everything else in the checkpoint is kept for :func:`write` in
    ``model.meta["torch_tree"]``; tensors outside the state dict are named by their path
    (``optimizer_state_dict/state/0/exp_avg``).
    """
    tree, fmt = load_state(path)
    key = _state_dict_key(path, tree)
    state, others = {}, {}
    skeleton = _split(path, tree, "", tree if key is None else tree[key], (state, others))
    model = state_dict_to_model(path, state)
    model.tensors.update(others)
    model.format, model.producer = fmt, "pytorch"
    model.meta.update(torch_tree=skeleton, torch_state_dict_key=key)
    if key is not None:
        model.notes.append(f"state dict read from checkpoint[{key!r}]")
    if others:
        model.notes.append(f"{len(others)} tensors outside the state dict (e.g. optimizer "
                           "state) are kept unchanged")
    return model


def write(model, output_path):
    """Write ``model`` as a drop-in ``torch.save`` zip file, without importing torch.

    The checkpoint's structure and non-tensor values come back as read; every tensor keeps
    its name, shape and dtype; LSTM weights are the IR's (materialized if compressed) and
    ``bias_ih = b - bias_hh``. Legacy-format inputs are written in the zip format.
    ``torch.load(output_path, weights_only=True)`` reads the result.

    Raises
    ------
    OptionError
        A layer was not read from a PyTorch state dict.
    """
    state = model_to_state_dict(model)
    tree = model.meta.get("torch_tree", OrderedDict())
    key = model.meta.get("torch_state_dict_key")
    node = tree if key is None else tree[key]
    slots = {v.name for v in node.values() if isinstance(v, TensorSlot)}
    after, previous = {}, None  # new state dict names, by the slot they follow
    for name in state:
        if name in slots:
            previous = name
        else:
            after.setdefault(previous, []).append(name)
    with atomic_path(output_path) as temporary:
        save_state(_fill(tree, {**model.tensors, **state}, node, after), temporary)


def state_dict_to_model(path, tensors):
    """Build the IR from a state dict.

    Parameters
    ----------
    path : pathlib.Path
        The file, for error messages.
    tensors : dict of str to Tensor
        Every tensor of the state dict in file order, raw data as stored.

    Returns
    -------
    Model
        LSTM layers grouped by module in order of first appearance, layers of one module by
        ``k``; ``tensors`` = the others; ``meta["tensor_order"]`` = all names in file order.
    """
    groups = {}
    for name in tensors:
        match = _KEY.match(name)
        if match:
            layer = None if match["layer"] is None else int(match["layer"])
            directions = groups.setdefault(match["module"], {}).setdefault(layer, ({}, {}))
            directions[bool(match["reverse"])][_ROLES[match["role"]]] = name
    model = Model(layers=[], topology="partial", meta={"tensor_order": list(tensors)})
    used = set()
    for module, layers in groups.items():
        previous = None
        for k in sorted(layers, key=lambda k: -1 if k is None else k):
            forward, reverse = layers[k]
            if not forward:
                raise InputError(path, f"{next(iter(reverse.values()))} has no forward direction")
            names = [forward, reverse] if reverse else [forward]
            layer = _layer(path, tensors, module, k, names, previous)
            if layer is None:
                model.notes.append(f"{names[0]['W']} and its siblings are not LSTM-shaped "
                                   "(GRU or RNN?); kept as tensors")
                continue
            model.layers.append(layer)
            used.update(n for d in names for n in d.values())
            previous = layer.name if k is not None else None
    model.tensors = {n: t for n, t in tensors.items() if n not in used}
    wrapped = {w for g in groups for w in _WRAPPERS if g.startswith(w)}
    if wrapped:
        model.notes.append(f"wrapper prefix {', '.join(sorted(wrapped))} left out of layer names")
    if model.tensors:
        model.notes.append(
            f"{len(model.tensors)} other tensors kept unchanged; a state dict does not say "
            "which layer (nn.Linear, nn.Embedding, ...) consumes which"
        )
    return model


def _layer(path, tensors, module, k, names, previous):
    """One LSTM layer from its parameter names, or None when the shapes are not an LSTM's."""
    base = module
    while base.startswith(_WRAPPERS):
        base = base.split(".", 1)[1]
    base = base.rstrip(".")
    name = (base or "cell") if k is None else (f"{base}_l{k}" if base else f"l{k}")
    directions, biases, dtypes = [], [], []
    for roles in names:
        _check_roles(path, tensors, name, k, roles)
        arrays = {role: to_float(tensors[key]) for role, key in roles.items()}
        hidden = arrays["proj" if "proj" in arrays else "R"].shape[1]
        if arrays["W"].shape[0] != 4 * hidden:
            return None
        if any(arrays[r].shape != (4 * hidden,) for r in ("b_ih", "b_hh") if r in arrays):
            raise InputError(path, f"layer {name}: biases must have shape ({4 * hidden},)")
        bias = _fold(arrays["b_ih"], arrays["b_hh"]) if "b_ih" in arrays else np.zeros(4 * hidden)
        dtype = {role: tensors[key].dtype for role, key in roles.items()}
        try:
            directions.append(LSTMDirection(
                W=Dense(to_canonical(arrays["W"], "torch"), dtype["W"]),
                R=Dense(to_canonical(arrays["R"], "torch"), dtype["R"]),
                b=to_canonical(bias, "torch"),
                proj=Dense(arrays["proj"], dtype["proj"]) if "proj" in arrays else None,
                bias_terms=2 if "b_ih" in roles else 0,
                bias_dtype=dtype.get("b_ih", dtype["W"]),
            ))
        except ValueError as error:
            raise InputError(path, f"layer {name}: {error}") from None
        biases.append({r: tensors[roles[r]] for r in ("b_ih", "b_hh") if r in roles})
        dtypes.append(dtype)
    source = {"module": module, "layer": k, "biases": biases, "dtypes": dtypes}
    return LSTMLayer(name, directions, inputs=[previous] if previous else None, source=source)


def _check_roles(path, tensors, name, k, roles):
    found = sorted(roles.values())
    if {"W", "R"} - set(roles) or len({"b_ih", "b_hh"} & set(roles)) == 1:
        raise InputError(path, f"layer {name}: incomplete LSTM parameters {found}")
    if k is None and "proj" in roles:
        raise InputError(path, f"layer {name}: an nn.LSTMCell has no weight_hr")
    for role, key in roles.items():
        tensor = tensors[key]
        if tensor.dtype not in _FLOATS:
            raise InputError(path, f"{key} is {tensor.dtype}; LSTM weights must be floats")
        if tensor.data.ndim != (1 if role.startswith("b") else 2):
            raise InputError(path, f"{key} has shape {tensor.data.shape}, not a matrix or vector")


def _fold(b_ih, b_hh):
    """``b_ih + b_hh`` in float64: exact for float32 and narrower, so ``b - b_hh == b_ih``."""
    return b_ih.astype(np.float64) + b_hh


def model_to_state_dict(model):
    """The state dict of ``model``: every tensor in file order, LSTM weights from the IR.

    Returns
    -------
    dict of str to Tensor
        New tensors (a projection a transform added) follow their direction's other tensors.

    Raises
    ------
    OptionError
        A layer was not read from a PyTorch state dict.
    """
    order = list(model.meta.get("tensor_order", model.tensors))
    produced = {}
    for layer in model.lstm_layers:
        if "biases" not in layer.source:
            raise OptionError(f"layer {layer.name} was not read from a PyTorch state dict; "
                              "write it in the format it was read from")
        for reverse, direction in enumerate(layer.directions):
            tensors = _direction_tensors(layer, reverse, direction)
            for before, name in zip(tensors, list(tensors)[1:]):
                if name not in order:
                    order.insert(order.index(before) + 1 if before in order else len(order), name)
            produced.update(tensors)
    found = {**model.tensors, **produced}
    return {name: found[name] for name in order if name in found}


def _direction_tensors(layer, reverse, direction):
    """The state dict entries of one direction, in nn.LSTM order."""
    module, k = layer.source["module"], layer.source["layer"]
    dtypes, biases = layer.source["dtypes"][reverse], layer.source["biases"][reverse]
    key = {role: f"{module}{torch_role}" + ("" if k is None else f"_l{k}" + "_reverse" * reverse)
           for torch_role, role in _ROLES.items()}
    out = {}
    for role, weight in direction.matrices.items():
        if role == "proj" and k is None:
            raise OptionError(f"layer {layer.name}: nn.LSTMCell has no projection")
        values = weight.materialize(np.float64)
        values = values if role == "proj" else from_canonical(values, "torch")
        dtype = dtypes.get(role, dtypes["W"])
        out[key[role]] = Tensor(key[role], from_float(values, dtype), dtype)
    b = from_canonical(direction.b, "torch")
    if not biases:
        if np.any(b):
            raise OptionError(f"layer {layer.name}: a bias-free nn.LSTM cannot hold a bias")
        return out
    b_ih, b_hh = biases["b_ih"], biases["b_hh"]
    if not np.array_equal(b, _fold(to_float(b_ih), to_float(b_hh))):
        b_ih = Tensor(b_ih.name, from_float(b - to_float(b_hh), b_ih.dtype), b_ih.dtype)
    out[key["b_ih"]], out[key["b_hh"]] = b_ih, b_hh
    return {name: out[name] for name in sorted(out, key=list(key.values()).index)}


def to_float(tensor):
    """A float tensor's values: float64 for float64, else float32 (bfloat16 bits widened);
    float32 and float64 data itself, not a copy."""
    if tensor.dtype == "bfloat16":
        return (tensor.data.astype(np.uint32) << 16).view(np.float32)
    return tensor.data.astype(np.float64 if tensor.dtype == "float64" else np.float32, copy=False)


def from_float(values, dtype):
    """``values`` rounded to the float ``dtype`` (bfloat16 as raw bits, nearest-even)."""
    if dtype != "bfloat16":
        return np.asarray(values).astype(dtype)
    bits = np.asarray(values, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def _state_dict_key(path, tree):
    """None when ``tree`` is the state dict, else the key of the dict inside it that is."""
    if _has_lstm(tree):
        return None
    if isinstance(tree, dict):
        for key in (*(k for k in _NESTED if k in tree), *tree):
            if _has_lstm(tree[key]):
                return key
    raise InputError(path, "no nn.LSTM or nn.LSTMCell parameters (weight_ih_l0, weight_hh_l0, "
                           "...) in the checkpoint or a state dict inside it")


def _has_lstm(value):
    return isinstance(value, dict) and any(
        isinstance(k, str) and _KEY.match(k) and isinstance(v, StoredTensor)
        for k, v in value.items()
    )


def _split(path, value, where, state_dict, found):
    """The checkpoint with each tensor replaced by a :class:`TensorSlot`.

    Tensors go to ``found[0]`` (entries of ``state_dict``, named by key) or ``found[1]``
    (elsewhere, named by their path).
    """
    if isinstance(value, StoredTensor):
        return _slot(path, value, where.lstrip("/"), found[1], found)
    if isinstance(value, dict):
        copy = type(value)()
        if isinstance(value, OrderedDict):
            copy.__dict__.update(vars(value))
        for key, item in value.items():
            if value is state_dict and isinstance(item, StoredTensor):
                copy[key] = _slot(path, item, str(key), found[0], found)
            else:
                copy[key] = _split(path, item, f"{where}/{key}", state_dict, found)
        return copy
    if isinstance(value, (list, tuple)):
        return type(value)(_split(path, v, f"{where}/{i}", state_dict, found)
                           for i, v in enumerate(value))
    return value


def _slot(path, tensor, name, target, found):
    if any(name in tensors for tensors in found):
        raise InputError(path, f"two tensors of the checkpoint are both named {name!r}")
    target[name] = Tensor(name, tensor.data, tensor.dtype)
    return TensorSlot(name, tensor.requires_grad, tensor.parameter)


def _fill(value, tensors, node, after):
    """The checkpoint to save: slots filled from ``tensors``; new names inserted in ``node``."""
    if isinstance(value, TensorSlot):
        tensor = tensors[value.name]
        return StoredTensor(tensor.data, tensor.dtype, value.requires_grad, value.parameter)
    if isinstance(value, dict):
        copy = type(value)()
        if isinstance(value, OrderedDict):
            copy.__dict__.update(vars(value))
        items = list(value.items())
        if value is node:
            items = _with_new_slots(items, after)
        for key, item in items:
            copy[key] = _fill(item, tensors, node, after)
        return copy
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(v, tensors, node, after) for v in value)
    return value


def _with_new_slots(items, after):
    found = [(name, TensorSlot(name)) for name in after.get(None, ())]
    for key, item in items:
        found.append((key, item))
        if isinstance(item, TensorSlot):
            found.extend((name, TensorSlot(name)) for name in after.get(item.name, ()))
    return found
