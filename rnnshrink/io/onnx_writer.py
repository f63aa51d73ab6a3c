"""Write a model read from ONNX back as a drop-in ONNX file: the original graph, new LSTM weights.

Each LSTM node's W, R and B become the IR's materialized weights (canonical i, f, g, o ->
ONNX i, o, f, c; ``B = (b - Rb) || Rb`` with ``Rb`` the file's original recurrent bias), in
the original dtype. An initializer used by that node alone is replaced in place; a shared one,
or a weight computed by a constant subgraph, is replaced by a new initializer and the constant
nodes and initializers left unused are removed. Initializers whose pass-through Tensor in
``model.tensors`` was changed (a refit Dense head) take its values; every other tensor, node and
attribute is kept byte for byte.
The output passes ``onnx.checker.check_model(full_check=True)``; it is one self-contained file
below protobuf's 2 GB limit, else the model plus ``<name>.data`` beside it.

References
----------
ONNX operator spec, ``LSTM``; ONNX IR spec, "External data".
"""

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import OptionError, RnnshrinkError
from .atomic import atomic_path
from .gates import from_canonical
from .onnx_external import inline_all
from .onnx_graph import LSTM_SLOTS, graphs, pass_through, subgraph, tensor_protos

_INLINE_LIMIT = 2**31 - 2**24  # protobuf refuses messages of 2 GB; keep a margin
_EXTERNAL_MIN_BYTES = 1024  # tensors at least this big go to the .data file above the limit


def write(model, output_path):
    """Write ``model`` (read by :func:`rnnshrink.io.onnx_graph.read`) to ``output_path``.

    Raises
    ------
    OptionError
        The model was not read from ONNX, or changed in a way an ONNX LSTM node cannot hold
        (projection, other sizes, activations or clip), or a pass-through tensor changed its
        shape or dtype.
    """
    if "onnx_model" not in model.meta:
        raise OptionError("the ONNX writer needs a model read from an ONNX file")
    proto = onnx.ModelProto()
    proto.CopyFrom(model.meta["onnx_model"])
    weights = [(layer, _onnx_weights(layer)) for layer in model.lstm_layers]
    uses = tensor_uses(proto)
    taken = {name for g in graphs(proto.graph) for name in
             [t.name for t in g.initializer] + [v.name for v in g.input]
             + [out for node in g.node for out in node.output]}
    stale = []
    for layer, arrays in weights:
        graph = subgraph(proto, layer.source["graph"])
        node = graph.node[layer.source["node_index"]]
        if node.op_type != "LSTM" or list(node.output) != layer.source["outputs"]:
            raise OptionError(f"layer {layer.name}: the stored ONNX graph does not match the model")
        for role, array in arrays.items():
            origin = layer.source["weights"].get(role)
            if origin and origin["kind"] == "initializer" and uses[origin["name"]] == 1:
                owner = subgraph(proto, origin["initializers"][0][0])
                tensor = next(t for t in owner.initializer if t.name == origin["name"])
                tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
                continue
            name = fresh_name(f"{layer.source['node'] or 'LSTM'}_{role}_rnnshrink", taken)
            graph.initializer.append(numpy_helper.from_array(array, name))
            node.input.extend([""] * (LSTM_SLOTS[role] + 1 - len(node.input)))
            node.input[LSTM_SLOTS[role]] = name
            stale += [origin] if origin else []
    _write_tensors(proto, model)
    prune_unused(proto, stale)
    save_checked(proto, model.meta["onnx_model"], Path(output_path), model.meta.get("onnx_path"))


def _onnx_weights(layer):
    """``{"W", "R"[, "B"]}`` arrays in ONNX layout and the file's dtypes for one LSTM layer."""
    source = layer.source
    fixed = (layer.gate_activation, layer.cell_activation, layer.hidden_activation)
    if source["activations"] != [a.to_dict() for a in fixed] or source["clip"] != layer.clip:
        raise OptionError(f"layer {layer.name}: activations or clip changed; the ONNX writer "
                          "keeps the node's attributes")
    if any(d.proj is not None for d in layer.directions):
        raise OptionError(f"layer {layer.name} has a projection, which an ONNX LSTM cannot hold")
    arrays = {
        role: np.stack([from_canonical(getattr(d, role).materialize(), "onnx")
                        for d in layer.directions])
        for role in ("W", "R")
    }
    for role, array in arrays.items():
        if array.shape != tuple(source["shapes"][role]):
            raise OptionError(f"layer {layer.name}: {role} is {array.shape}, the ONNX graph "
                              f"needs {tuple(source['shapes'][role])} (shapes must not change)")
    b = np.stack([from_canonical(d.b.astype(np.float64), "onnx") for d in layer.directions])
    recurrent = source["Rb"] if source["Rb"] is not None else np.zeros_like(b)
    if source["Rb"] is not None or np.any(b):
        arrays["B"] = np.concatenate([b - recurrent.astype(np.float64), recurrent], axis=1)
    return {role: array.astype(source["dtypes"][role]) for role, array in arrays.items()}


def _write_tensors(proto, model):
    """Replace the initializers whose pass-through Tensor a transform changed (a refit head)."""
    for graph in graphs(proto.graph):
        for tensor in graph.initializer:
            new = model.tensors.get(tensor.name)
            if new is None or new.data.dtype == object:  # strings are never transformed
                continue
            old = pass_through(tensor, model.meta.get("onnx_path"))
            if (new.dtype, new.data.dtype, new.data.shape) != (old.dtype, old.data.dtype,
                                                               old.data.shape):
                raise OptionError(f"tensor {tensor.name}: {new.dtype} {new.data.shape} cannot "
                                  f"replace the file's {old.dtype} {old.data.shape}")
            if new.data.tobytes() != old.data.tobytes():
                tensor.CopyFrom(helper.make_tensor(tensor.name, tensor.data_type, tensor.dims,
                                                   new.data.tobytes(), raw=True))


def tensor_uses(proto):
    """How often each tensor name is read: node inputs of every graph, and graph outputs."""
    uses = Counter()
    for graph in graphs(proto.graph):
        uses.update(name for node in graph.node for name in node.input if name)
        uses.update(value.name for value in graph.output)
    return uses


def fresh_name(name, taken):
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate


def prune_unused(proto, origins):
    """Remove the constant nodes and initializers of replaced weights that nothing reads now."""
    uses = tensor_uses(proto)
    nodes = {}  # (address, index) -> node, every candidate node
    for origin in origins:
        for address, output in origin["nodes"]:
            graph = subgraph(proto, address)
            index = next(i for i, n in enumerate(graph.node) if output in n.output)
            nodes[(_hashable(address), index)] = graph.node[index]
    dead, changed = set(), True
    while changed:
        changed = False
        for key, node in nodes.items():
            if key not in dead and not any(uses[name] for name in node.output if name):
                dead.add(key)
                uses.subtract(name for name in node.input if name)
                changed = True
    doomed = {(_hashable(a), n) for origin in origins for a, n in origin["initializers"]
              if uses[n] <= 0}
    removals = {}
    for address, index in dead:
        removals.setdefault(address, (set(), set()))[0].add(index)
    for address, name in doomed:
        removals.setdefault(address, (set(), set()))[1].add(name)
    for address in sorted(removals, key=len, reverse=True):  # deepest graphs first
        graph, (indices, names) = subgraph(proto, address), removals[address]
        for index in sorted(indices, reverse=True):
            del graph.node[index]
        for field in (graph.initializer, graph.input):
            for index in reversed([i for i, item in enumerate(field) if item.name in names]):
                del field[index]


def _hashable(address):
    """A graph address as nested tuples (a container round trip stores it as lists)."""
    return tuple(tuple(step) for step in address)


def save_checked(proto, original, output, source=None):
    """Check, then write atomically: inline below the protobuf limit, else with a .data file.

    ``source`` is the file ``original`` was read from: the external data the graph still
    refers to is read beside it (and inlined in ``proto``) here.
    """
    inline_all(source, tensor_protos(proto.graph))
    if proto.ByteSize() < _INLINE_LIMIT:
        _check(proto, original, source)
        with atomic_path(output) as temporary:
            temporary.write_bytes(proto.SerializeToString())
        return
    data = output.with_name(output.name + ".data")
    with atomic_path(data) as temporary, open(temporary, "wb") as handle:
        for tensor in tensor_protos(proto.graph):
            if len(tensor.raw_data) >= _EXTERNAL_MIN_BYTES:
                entries = {"location": data.name, "offset": handle.tell(),
                           "length": len(tensor.raw_data)}
                handle.write(tensor.raw_data)
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for key, value in entries.items():
                    tensor.external_data.add(key=key, value=str(value))
    try:
        with atomic_path(output) as temporary:
            temporary.write_bytes(proto.SerializeToString())
            _check(str(temporary), original, source)
    except BaseException:
        data.unlink()
        raise


def _check(model, original, source):
    """``onnx.checker`` with ``full_check``; a failure the input graph shares is the input's own."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        if original is not None:  # None: a graph rnnshrink built itself, no excuse
            inlined = onnx.ModelProto()
            inlined.CopyFrom(original)
            inline_all(source, tensor_protos(inlined.graph))
            try:
                onnx.checker.check_model(inlined, full_check=True)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError):
                return
        raise RnnshrinkError(f"the written ONNX graph fails onnx.checker: {error}") from None
