"""Read ONNX graphs: every ``LSTM`` node, subgraphs of ``If`` / ``Loop`` / ``Scan`` included.

W, R, B (and P) may be initializers, ``Constant`` nodes, or computed from them by constant-only
ops (exported cells feed W / R through Slice / Concat / Unsqueeze chains); such chains are
evaluated with onnx's own reference evaluator. ONNX stores W ``[dirs, 4H, D]``, R
``[dirs, 4H, H]`` and B ``[dirs, 8H] = Wb || Rb`` in gate order i, o, f, c; the IR folds the
bias as ``Wb + Rb`` (in float64, so a writer recovers ``Wb`` exactly) and keeps ``Rb`` in
``source``. Refused: ``input_forget=1``, non-zero peepholes, activations that differ between
directions. External data is read only from files inside the model's own folder, mapped
rather than copied (:mod:`.onnx_external`).

References
----------
ONNX operator spec, ``LSTM`` (opsets 7-22) and IR spec "External data"; onnxruntime
``rnn_helpers.cc`` (``activation_alpha`` / ``activation_beta`` are consumed in order by the
functions that use them; when they run out, onnxruntime's defaults below apply).
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from ..errors import InputError
from ..model import (
    DTYPE_BYTES,
    Activation,
    Dense,
    DenseLayer,
    LSTMDirection,
    LSTMLayer,
    Model,
    OtherLayer,
    Tensor,
)
from .gates import to_canonical
from .onnx_external import check_and_inline, inline_all, tensor_array

# ONNX activation (lower case) -> (rnnshrink name, default alpha, default beta); None = unused.
_ACTIVATIONS = {
    "sigmoid": ("sigmoid", None, None),
    "tanh": ("tanh", None, None),
    "relu": ("relu", None, None),
    "hardsigmoid": ("hard_sigmoid", 0.2, 0.5),
    "affine": ("affine", 0.0, 0.0),
    "leakyrelu": ("leaky_relu", 0.01, None),
    "thresholdedrelu": ("thresholded_relu", 0.0, None),
    "scaledtanh": ("scaled_tanh", 0.0, 0.0),
    "elu": ("elu", 1.0, None),
    "softsign": ("softsign", None, None),
    "softplus": ("softplus", None, None),
}
_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
_A = onnx.AttributeProto
_LSTM_ATTRIBUTES = {"activation_alpha": _A.FLOATS, "activation_beta": _A.FLOATS,
                    "activations": _A.STRINGS, "clip": _A.FLOAT, "direction": _A.STRING,
                    "hidden_size": _A.INT, "input_forget": _A.INT, "layout": _A.INT}
LSTM_SLOTS = {"W": 1, "R": 2, "B": 3, "P": 7}  # LSTM input positions of the constant inputs
_SHAPE_OPS = {"Squeeze", "Unsqueeze", "Transpose", "Reshape", "Identity", "Dropout", "Flatten"}
_TIME_OPS = {"Slice", "Gather"}  # also crossed between the last LSTM and its head
_RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
               "Multinomial", "Bernoulli"}
_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
UNROLLED = ("no LSTM node in the graph (its recurrence may have been unrolled into MatMul/Gemm "
            "ops at export; rnnshrink reads ONNX LSTM nodes)")


def read(path, **options):
    """Read an ``.onnx`` file into a :class:`~rnnshrink.model.Model` (other options ignored).

    Layers are the LSTM nodes in graph order, then the MatMul / Gemm reading the last LSTM
    (a DenseLayer when its weight is constant, else an OtherLayer). ``meta`` holds ``opset``,
    ``ir_version``, the loaded ``onnx_model`` (initializers' external data still external) and
    ``onnx_path``, the file it came from, for the writers; ``input_files``: its external data
    files, which no output may replace.
    """
    path = Path(path)
    proto, files = _load(path)
    graph = _Graph(proto.graph)
    walk = list(graph.walk())
    lstms = [(g, i, node) for g, i, node in walk if node.op_type == "LSTM" and not node.domain]
    if not lstms:
        ops = {node.op_type for _, _, node in walk}
        other = sorted(ops & {"GRU", "RNN"})
        raise InputError(path, f"no LSTM node in the graph (found {', '.join(other)} only; "
                               "rnnshrink reads ONNX LSTM nodes)" if other else
                         UNROLLED if ops & {"MatMul", "Gemm"} else "no LSTM node in the graph")
    reader = _Reader(path, proto)
    layers = [reader.lstm(g, i, node) for g, i, node in lstms]
    head = reader.head(*lstms[-1])
    layers += [head] if head else []
    tensors = {
        tensor.name: pass_through(tensor, path)
        for g in graphs(proto.graph)
        for tensor in g.initializer
        if tensor.name not in reader.owned
    }
    producer = f"{proto.producer_name} {proto.producer_version}".strip() or "unknown"
    opset = {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import}
    meta = {"opset": opset, "ir_version": proto.ir_version, "onnx_model": proto,
            "onnx_path": str(path), "input_files": files}
    return Model(layers, tensors, format="onnx", producer=producer, topology="known",
                 notes=reader.notes, meta=meta)


class _Graph:
    """One graph (main graph or subgraph); names resolve here first, then in enclosing graphs."""

    def __init__(self, graph, parent=None, path="", address=()):
        self.graph, self.parent, self.path, self.address = graph, parent, path, address
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = {value.name for value in graph.input}
        self.producers, self.consumers = {}, {}
        for index, node in enumerate(graph.node):
            for name in node.output:
                self.producers[name] = index
            for name in node.input:
                self.consumers.setdefault(name, []).append(index)

    def lookup(self, name):
        """``(graph, kind, item)``: kind ``"node"`` (item = index), ``"initializer"``, ``"input"``."""
        graph = self
        while graph is not None:
            if name in graph.producers:
                return graph, "node", graph.producers[name]
            if name in graph.initializers:
                return graph, "initializer", graph.initializers[name]
            if name in graph.inputs:
                return graph, "input", None
            graph = graph.parent
        return None, None, None

    def walk(self):
        """Yield ``(graph, index, node)`` for every node, entering subgraphs after their node."""
        for index, node in enumerate(self.graph.node):
            yield self, index, node
            for attr in node.attribute:
                subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs
                for k, sub in enumerate(subgraphs if attr.type in _GRAPH_ATTRS else []):
                    label = f"{_label(index, node)}.{attr.name}" + (f"[{k}]" if k else "")
                    path = f"{self.path}/{label}" if self.path else label
                    yield from _Graph(sub, self, path, self.address + ((index, attr.name, k),)).walk()


class _Reader:
    """Turns nodes into layers, remembering layer names and the initializers layers own."""

    def __init__(self, path, proto):
        self.path, self.proto = path, proto
        self.names, self.notes, self.owned = {}, [], set()

    def fail(self, label, problem):
        raise InputError(self.path, f"LSTM node {label!r}: {problem}")

    def constant(self, graph, name):
        """``(value, origin)`` when only constants feed tensor ``name``, else ``None``."""
        nodes, inits = {}, {}
        if not name or not _collect(graph, name, nodes, inits):
            return None
        try:
            if nodes:
                fold = helper.make_graph(list(nodes.values()), "fold", [],
                                         [helper.make_empty_tensor_value_info(name)],
                                         [t for _, t in inits.values()])
                model = helper.make_model(fold, opset_imports=self.proto.opset_import,
                                          ir_version=self.proto.ir_version)
                inline_all(self.path, model.graph.initializer)
                value = ReferenceEvaluator(model).run(None, {})[0]
            else:
                value = tensor_array(self.path, inits[name][1])
        except Exception as error:  # the evaluator raises anything on malformed graphs
            raise InputError(self.path, f"cannot evaluate constant {name!r} ({error})") from None
        origin = {
            "name": name,
            "kind": "computed" if nodes else "initializer",
            "nodes": [(address, node.output[0]) for (address, _), node in nodes.items()],
            "initializers": [(g.address, n) for n, (g, _) in inits.items()],
            "floats": [n for n, (_, t) in inits.items() if _is_float(t.data_type)],
        }
        return np.asarray(value), origin

    def lstm(self, graph, index, node):
        label = _label(index, node)
        attrs = self.attributes(label, node)
        direction = attrs.get("direction", "forward")
        if direction not in _DIRECTIONS:
            self.fail(label, f"unknown direction {direction!r}")
        if attrs.get("input_forget", 0):
            self.fail(label, "attribute input_forget=1 (coupled input/forget gates) is not supported")
        inputs = list(node.input) + [""] * (8 - len(node.input))
        found = {role: self.constant(graph, inputs[slot]) for role, slot in LSTM_SLOTS.items()}
        for role in ("W", "R", "B", "P"):
            if not inputs[LSTM_SLOTS[role]] and role in "WR":
                self.fail(label, f"input {role} is missing")
            if inputs[LSTM_SLOTS[role]] and found[role] is None:
                self.fail(label, f"input {role} is not a constant (only constant weights are read)")
            if found[role] is not None and found[role][0].dtype.name not in DTYPE_BYTES:
                self.fail(label, f"input {role} is {found[role][0].dtype}; LSTM weights must be "
                                 f"{', '.join(DTYPE_BYTES)}")
        if found["P"] is not None and np.any(found["P"][0]):
            self.fail(label, "input P (peephole weights) is not supported")
        if found["P"] is not None:
            self.notes.append(f"{label}: all-zero peephole input P ignored")
        for role in ("W", "R", "B"):
            self.owned |= set(found[role][1]["floats"] if found[role] else [])
        W, R = found["W"][0], found["R"][0]
        dirs = _DIRECTIONS[direction]
        if W.ndim != 3 or W.shape[1] % 4:
            self.fail(label, f"W has shape {W.shape}, expected (directions, 4 * hidden, input)")
        hidden = attrs.get("hidden_size", W.shape[1] // 4)
        shapes = {"W": (dirs, 4 * hidden, W.shape[2]), "R": (dirs, 4 * hidden, hidden),
                  "B": (dirs, 8 * hidden)}
        B = found["B"][0] if found["B"] else None
        for role, array in (("W", W), ("R", R), ("B", B)):  # before a default B is allocated
            if array is not None and array.shape != shapes[role]:
                self.fail(label, f"{role} has shape {array.shape}, expected {shapes[role]}")
        B = np.zeros((dirs, 8 * hidden), W.dtype) if B is None else B
        if inputs[4]:
            self.notes.append(f"{label}: sequence_lens ignored (full-length sequences are run)")
        activations = self.activations(label, attrs, dirs)
        directions = [
            LSTMDirection(
                Dense(to_canonical(W[d], "onnx"), W.dtype.name),
                Dense(to_canonical(R[d], "onnx"), R.dtype.name),
                to_canonical(B[d, :4 * hidden].astype(np.float64) + B[d, 4 * hidden:], "onnx"),
                bias_terms=2 if found["B"] else 0,
                bias_dtype=B.dtype.name,
            )
            for d in range(dirs)
        ]
        source = {
            "node": node.name, "node_index": index, "graph": graph.address, "subgraph": graph.path,
            "direction": direction, "layout": attrs.get("layout", 0), "X": inputs[0],
            "weights": {role: found[role][1] for role in ("W", "R", "B") if found[role]},
            "Rb": B[:, 4 * hidden:] if found["B"] else None,
            "shapes": shapes,
            "activations": [activation.to_dict() for activation in activations],
            "clip": attrs.get("clip"),
            "dtypes": {"W": W.dtype.name, "R": R.dtype.name, "B": B.dtype.name},
            "sequence_lens": inputs[4] or None,
            "initial_h": inputs[5] or None,
            "initial_c": inputs[6] or None,
            "constant_initial_state": {
                role: self.constant(graph, inputs[slot]) is not None
                for role, slot in (("initial_h", 5), ("initial_c", 6)) if inputs[slot]
            },
            "outputs": list(node.output),
        }
        name = label if label not in self.names.values() else f"{graph.path}/{label}"
        self.names[(graph.address, index)] = name
        return LSTMLayer(name, directions, *activations, clip=attrs.get("clip"),
                         reverse_only=direction == "reverse",
                         inputs=[self.feeder(graph, inputs[0])], source=source)

    def attributes(self, label, node):
        """The LSTM node's attributes by name, each checked against :data:`_LSTM_ATTRIBUTES`;
        strings decoded."""
        found = {}
        for attr in node.attribute:
            kind = _LSTM_ATTRIBUTES.get(attr.name)
            if kind is not None and attr.type != kind:
                self.fail(label, f"attribute {attr.name} is of type "
                                 f"{onnx.AttributeProto.AttributeType.Name(attr.type)}, expected "
                                 f"{onnx.AttributeProto.AttributeType.Name(kind)}")
            value = helper.get_attribute_value(attr)
            try:
                if attr.type == onnx.AttributeProto.STRING:
                    value = value.decode()
                elif attr.type == onnx.AttributeProto.STRINGS:
                    value = [v.decode() for v in value]
            except UnicodeDecodeError:
                self.fail(label, f"attribute {attr.name} is not UTF-8 text")
            found[attr.name] = value
        if found.get("hidden_size", 1) < 1 or found.get("layout", 0) not in (0, 1):
            self.fail(label, f"hidden_size {found.get('hidden_size')} or layout "
                             f"{found.get('layout')} out of range")
        return found

    def activations(self, label, attrs, dirs):
        """The f, g, h activations (one triple shared by all directions)."""
        names = attrs.get("activations") or ["Sigmoid", "Tanh", "Tanh"] * dirs
        if len(names) != 3 * dirs:
            self.fail(label, f"activations lists {len(names)} functions, expected {3 * dirs}")
        alphas, betas = iter(attrs.get("activation_alpha", [])), iter(attrs.get("activation_beta", []))
        parsed = []
        for onnx_name in names:
            if onnx_name.lower() not in _ACTIVATIONS:
                self.fail(label, f"unsupported activation {onnx_name!r}")
            name, alpha, beta = _ACTIVATIONS[onnx_name.lower()]
            alpha = None if alpha is None else next(alphas, alpha)
            beta = None if beta is None else next(betas, beta)
            parsed.append(Activation(name, alpha, beta))
        if parsed[:3] != parsed[3:] and dirs == 2:
            self.fail(label, f"directions use different activations {names} (the IR shares them)")
        return parsed[:3]

    def feeder(self, graph, name):
        """The LSTM layer whose Y reaches ``name`` through shape-only ops, else its producer."""
        while True:
            owner, kind, index = graph.lookup(name)
            if kind != "node":
                return name
            node = owner.graph.node[index]
            if node.op_type in _SHAPE_OPS:
                graph, name = owner, node.input[0]
                continue
            if node.op_type == "LSTM" and name == node.output[0]:
                return self.names.get((owner.address, index), _label(index, node))
            return _label(index, node)

    def head(self, graph, index, lstm):
        """What reads the last LSTM's Y / Y_h past shape ops: a DenseLayer (MatMul / Gemm with a
        constant weight) if any, else an OtherLayer for the first other op, else ``None``."""
        inputs = [self.names[(graph.address, index)]]
        frontier, readers = [name for name in lstm.output[:2] if name], []
        while frontier:
            name = frontier.pop(0)
            for k in graph.consumers.get(name, []):
                node = graph.graph.node[k]
                if node.op_type in _SHAPE_OPS | _TIME_OPS and node.input[0] == name:
                    frontier.append(node.output[0])
                else:
                    readers.append((k, node, name))
        for k, node, name in readers:
            dense = self.dense(graph, k, node, name, inputs)
            if dense:
                return dense
        return next((OtherLayer(_label(k, node), node.op_type, inputs,
                                {"node": node.name, "subgraph": graph.path})
                     for k, node, _ in readers), None)

    def dense(self, graph, index, node, name, inputs):
        """A DenseLayer for ``MatMul(x, B)`` (+ ``Add`` of a constant) or ``Gemm`` with constant B.

        Its initializers stay pass-through tensors; ``source["tensors"]`` names them (roles in
        ``source["layout"]``) where writing a refit W back is unambiguous: a plain initializer,
        Gemm ``alpha`` = 1, and not a square matrix stored transposed (``B`` of shape (in, out)).
        """
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type not in ("MatMul", "Gemm") or node.input[0] != name or attrs.get("transA"):
            return None
        found = self.constant(graph, node.input[1])
        if found is None or found[0].ndim != 2 or found[0].dtype.name not in DTYPE_BYTES:
            return None
        stored, transposed = found[0], not attrs.get("transB")
        alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
        weight = (stored.T if transposed else stored) * np.float32(alpha)
        bias_names = [n for n in node.input[2:3] if n]
        consumers = graph.consumers.get(node.output[0], [])
        if node.op_type == "MatMul" and len(consumers) == 1:
            add = graph.graph.node[consumers[0]]
            bias_names = [n for n in add.input if n != node.output[0]] if add.op_type == "Add" else []
        bias = self.constant(graph, bias_names[0]) if len(bias_names) == 1 else None
        if bias is not None and bias[0].size != weight.shape[0]:
            bias = None
        layout = {}
        if found[1]["kind"] == "initializer" and alpha == 1.0 and not (
                transposed and stored.shape[0] == stored.shape[1]):
            layout[found[1]["name"]] = "W"
            if bias and bias[1]["kind"] == "initializer" and beta == 1.0:
                layout[bias[1]["name"]] = "b"
        source = {"node": node.name, "op": node.op_type, "subgraph": graph.path,
                  "transposed": transposed, "alpha": alpha, "beta": beta,
                  "tensors": list(layout), "layout": layout}
        return DenseLayer(_label(index, node), Dense(weight, stored.dtype.name),
                          None if bias is None else bias[0].reshape(-1) * np.float32(beta),
                          bias[0].dtype.name if bias else "float32", inputs=inputs, source=source)


def _collect(graph, name, nodes, inits):
    """Gather the constant-only nodes and initializers computing ``name``; False if not constant."""
    owner, kind, item = graph.lookup(name)
    if kind == "initializer":
        inits[name] = (owner, item)
        return True
    if kind != "node":
        return False
    node = owner.graph.node[item]
    key = (owner.address, item)
    if key in nodes:
        return True
    if (node.op_type in _RANDOM_OPS or node.domain not in ("", "ai.onnx")
            or any(a.type in _GRAPH_ATTRS for a in node.attribute)):
        return False
    if not all(_collect(owner, n, nodes, inits) for n in node.input if n):
        return False
    nodes[key] = node
    return True


def _label(index, node):
    return node.name or f"{node.op_type}_{index}"


def _is_float(data_type):
    return data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                         onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


def pass_through(proto, path):
    """A byte-exact pass-through Tensor; ml_dtypes arrays (bfloat16, ...) as raw unsigned bits.

    ``path`` is the model file (external data is read beside it).
    """
    try:
        data = tensor_array(path, proto)
    except Exception as error:
        raise InputError(path, f"initializer {proto.name!r} is malformed ({error})") from None
    dtype = helper.tensor_dtype_to_np_dtype(proto.data_type).name
    if data.dtype.kind == "V":
        data = data.view(f"uint{8 * data.dtype.itemsize}")
    return Tensor(proto.name, data, dtype)


def _load(path):
    """Parse the protobuf and check its external data (see :mod:`.onnx_external`)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise InputError(path, f"not a readable ONNX model, truncated or corrupt ({error})") from None
    if not proto.graph.node:
        raise InputError(path, "not an ONNX model (no graph nodes; truncated or another format)")
    if not _text_strings(proto):
        raise InputError(path, "the model holds names or strings that are not UTF-8 text")
    initializers = [t for g in graphs(proto.graph) for t in g.initializer]
    files = check_and_inline(path, proto, initializers, list(tensor_protos(proto.graph)))
    return proto, files


def _text_strings(message):
    """Whether every string field of a protobuf message (recursively) holds text: protobuf
    hands back bytes for a string field that is not valid UTF-8."""
    for field, value in message.ListFields():
        if field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
            continue
        items = [value] if isinstance(value, (str, bytes)) or hasattr(value, "ListFields") \
            else value
        if field.type == field.TYPE_STRING:
            if not all(isinstance(item, str) for item in items):
                return False
        elif not all(_text_strings(item) for item in items):
            return False
    return True


def subgraph(proto, address):
    """The GraphProto at ``address`` (a layer's ``source["graph"]``) inside ModelProto ``proto``."""
    graph = proto.graph
    for index, attr_name, k in address:
        attr = next(a for a in graph.node[index].attribute if a.name == attr_name)
        graph = attr.g if attr.type == onnx.AttributeProto.GRAPH else attr.graphs[k]
    return graph


def graphs(graph):
    """A graph and all its subgraphs, recursively."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from graphs(sub)


def tensor_protos(graph):
    """Every TensorProto of a graph and its subgraphs: initializers and node attributes."""
    for g in graphs(graph):
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in g.node:
            for attr in node.attribute:
                yield from ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
