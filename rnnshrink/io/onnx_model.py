"""``rnnshrink convert --to onnx``: the whole model where the file allows it, else the LSTM stack.

* A model read from ONNX (or its compressed container, given the original graph): the user's
  **original graph** with each ``LSTM`` node replaced in place — nodes inside ``If`` / ``Loop``
  / ``Scan`` subgraphs included — by the nodes :func:`~rnnshrink.io.onnx_export.lstm_layer_nodes`
  builds for the compressed layer, followed by the Reshape / Transpose that give the node's own
  outputs ``Y (time, dirs, batch, out)``, ``Y_h``, ``Y_c`` (``layout = 1`` handled both ways).
  Graph inputs and outputs are unchanged, so it is a drop-in model file. A refit Dense head
  (MatMul / Gemm weight) gets its new weight; a projection changes the width between the LSTM
  and its head, so stale ``value_info`` shapes are dropped and shapes are inferred again.
* A Keras full model whose layers are all of kinds rnnshrink knows (InputLayer, Embedding,
  LSTM / Bidirectional, Dropout, Dense): the whole model — input ``tokens`` (batch, time) int64
  or ``X`` (batch, time, input) float32, output ``Y`` (batch, time, units) of the last layer.
* Otherwise the LSTM stack alone (:func:`~rnnshrink.io.onnx_export.build_stack`).

The graph's default-domain opset is raised to the exporter's (21) with onnx's version converter
when it is older, so that compact weights (INT4, blocked DequantizeLinear) are available.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from .. import __version__
from ..errors import OptionError
from ..model import DenseLayer, EmbeddingLayer, LSTMLayer, OtherLayer
from .exporting import repacked_note
from .onnx_export import MIN_OPSET, build_stack, lstm_layer_nodes
from .onnx_external import inline_all
from .onnx_graph import graphs, tensor_protos
from .onnx_writer import fresh_name, save_checked, tensor_uses

_KERAS_PASSIVE = ("InputLayer", "Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise")
_HEAD_ACTIVATIONS = {"softmax": "Softmax", "sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}


def export_model(model, output, style="auto", opset=MIN_OPSET):
    """Write ``model`` as ONNX (see the module docstring) and describe what was written.

    Returns
    -------
    dict
        ``graph`` (``"original"``, ``"keras model"`` or ``"lstm stack"``), ``inputs``,
        ``outputs``, ``notes``.
    """
    notes = []
    if "onnx_model" in model.meta:
        proto = replace_lstm_nodes(model, style, opset)
        kind = "original"
    elif _keras_chain(model) is not None:
        proto = keras_model_graph(model, style, opset)
        kind = "keras model"
    else:
        proto = build_stack(model, style, opset)
        kind = "lstm stack"
        if model.format == "rnnshrink" and model.meta.get("source_format") == "onnx":
            notes.append("the container does not hold the original ONNX graph: exported the "
                         "LSTM stack alone")
    repacked = repacked_note(model.lstm_layers)
    if repacked:
        notes.append(repacked)
    save_checked(proto, model.meta.get("onnx_model"), output, model.meta.get("onnx_path"))
    describe = [(v.name, _shape(v)) for v in proto.graph.input]
    return {"graph": kind, "inputs": dict(describe),
            "outputs": {v.name: _shape(v) for v in proto.graph.output}, "notes": notes}


def replace_lstm_nodes(model, style="auto", opset=MIN_OPSET):
    """The model's original ONNX graph with every LSTM node replaced by its compressed layer."""
    proto = _at_opset(model.meta["onnx_model"], opset, model.meta.get("onnx_path"))
    taken = {name for g in graphs(proto.graph) for name in
             [t.name for t in g.initializer] + [v.name for v in g.input]
             + [out for node in g.node for out in node.output]}
    stale = set()
    for layer in model.lstm_layers:
        graph, index = _find_node(proto, layer)
        node = graph.node[index]
        prefix = fresh_name("rnnshrink_" + _safe(layer.name), taken) + "_"
        nodes, tensors = _replacement(layer, node, prefix, style)
        stale.update(name for name in node.input[1:4] if name)
        del graph.node[index]
        for offset, new in enumerate(nodes):
            graph.node.insert(index + offset, new)
        graph.initializer.extend(tensors)
    for layer in model.layers:
        if isinstance(layer, DenseLayer) and layer.source.get("changed"):
            _replace_head_weight(proto, layer)
    for graph in graphs(proto.graph):
        del graph.value_info[:]  # widths may have changed; shapes are inferred again
    _drop_unused(proto, stale)
    return onnx.shape_inference.infer_shapes(proto)


def _find_node(proto, layer):
    """The graph holding ``layer``'s LSTM node and its index, found by the node's outputs
    (indices move when the version converter rewrites the graph)."""
    outputs = list(layer.source["outputs"])
    for graph in graphs(proto.graph):
        for index, node in enumerate(graph.node):
            if node.op_type == "LSTM" and list(node.output) == outputs:
                return graph, index
    raise OptionError(f"layer {layer.name}: the stored ONNX graph does not match the model")


def _drop_unused(proto, names):
    """Remove the initializers and constant-only nodes behind the replaced weights that nothing
    reads any more."""
    changed = True
    while changed:
        changed = False
        uses = tensor_uses(proto)
        for graph in graphs(proto.graph):
            for index in reversed(range(len(graph.node))):
                node = graph.node[index]
                if set(node.output) & names and not any(uses[out] for out in node.output):
                    names.update(name for name in node.input if name)
                    del graph.node[index]
                    changed = True
            for index in reversed(range(len(graph.initializer))):
                name = graph.initializer[index].name
                if name in names and not uses[name]:
                    del graph.initializer[index]


def _replacement(layer, node, prefix, style):
    """Nodes and initializers computing ``node``'s outputs with ``layer``'s weights."""
    inputs = list(node.input) + [""] * (8 - len(node.input))
    if inputs[4]:
        raise OptionError(f"layer {layer.name}: sequence_lens cannot be exported in compact form")
    if inputs[7]:
        raise OptionError(f"layer {layer.name}: peephole input P is not supported")
    batch_first = layer.source.get("layout", 0) == 1
    nodes = []

    def op(op_type, inputs, **attributes):
        name = f"{prefix}{op_type}_{len(nodes)}"
        nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name

    x = op("Transpose", [inputs[0]], perm=[1, 0, 2]) if batch_first else inputs[0]
    h0, c0 = inputs[5], inputs[6]
    if batch_first:  # initial states (batch, dirs, .) -> (dirs, batch, .)
        h0 = op("Transpose", [h0], perm=[1, 0, 2]) if h0 else ""
        c0 = op("Transpose", [c0], perm=[1, 0, 2]) if c0 else ""
    tensors = []
    maps = _state_maps(layer)
    if maps is not None:  # the layer's state width changed: map the node's initial states
        for k, (given, matrix) in enumerate(zip((h0, c0), maps)):
            if given and not _identity(matrix):  # c is unchanged unless ISS removed units
                constant = numpy_helper.from_array(matrix, f"{prefix}state_map{k}")
                tensors.append(constant)
                mapped = op("MatMul", [given, constant.name])
                h0, c0 = (mapped, c0) if k == 0 else (h0, mapped)
    built, more, y, h, c = lstm_layer_nodes(layer, x, prefix, style,
                                            initial_h=h0 or None, initial_c=c0 or None)
    nodes[len(nodes):] = built
    tensors += more
    outputs = list(node.output) + [""] * (3 - len(node.output))
    if outputs[0]:
        shape = numpy_helper.from_array(
            np.array([0, 0, layer.num_directions, layer.out_size], np.int64), f"{prefix}y_shape")
        tensors.append(shape)
        y4 = op("Reshape", [y, shape.name])  # (time, batch, dirs, out)
        nodes.append(helper.make_node("Transpose", [y4], [outputs[0]],
                                      perm=[1, 0, 2, 3] if batch_first else [0, 2, 1, 3]))
    for state, name in ((h, outputs[1]), (c, outputs[2])):
        if name:
            kind = ("Transpose", {"perm": [1, 0, 2]}) if batch_first else ("Identity", {})
            nodes.append(helper.make_node(kind[0], [state], [name], **kind[1]))
    return nodes, tensors


def _state_maps(layer):
    """Maps of the node's initial states into the compressed layer's, or None if unchanged.

    The original node's state is ``m`` (hidden units, width ``H``); the compressed layer keeps
    units ``K`` (ISS) and projects (SVD): ``h' = P S_K m`` and ``c' = S_K c``, with ``S_K``
    selecting the kept units. Returns float32 arrays of shape (dirs, H, out) and (dirs, H, H').
    """
    hidden = layer.source["shapes"]["R"][-1]
    if layer.out_size == hidden and layer.hidden_size == hidden:
        return None
    kept = layer.source.get("iss_kept") or [list(range(hidden))] * layer.num_directions
    h_maps, c_maps = [], []
    for units, direction in zip(kept, layer.directions):
        select = np.zeros((len(units), hidden), np.float32)
        select[np.arange(len(units)), units] = 1.0
        h_map = select if direction.proj is None else direction.proj.materialize(np.float32) @ select
        h_maps.append(h_map.T)
        c_maps.append(select.T)
    return np.stack(h_maps), np.stack(c_maps)


def _identity(maps):
    """Whether every map of ``maps`` (dirs, n, n') is the identity (nothing to store)."""
    return maps.shape[1] == maps.shape[2] and np.array_equal(maps, np.broadcast_to(
        np.eye(maps.shape[1], dtype=maps.dtype), maps.shape))


def _replace_head_weight(proto, layer):
    """Write a refit Dense layer's weight into the initializer its reader recorded."""
    names = [name for name, role in layer.source.get("layout", {}).items() if role == "W"]
    if not names:
        raise OptionError(f"layer {layer.name} was refit but its weight cannot be written back")
    values = layer.W.materialize(np.float32)
    values = values.T if layer.source.get("transposed") else values
    for graph in graphs(proto.graph):
        for tensor in graph.initializer:
            if tensor.name in names:
                dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
                tensor.CopyFrom(numpy_helper.from_array(values.astype(dtype), tensor.name))


def keras_model_graph(model, style="auto", opset=MIN_OPSET):
    """The whole Keras model (embedding, LSTM stack, Dense head) as one ONNX graph."""
    chain = _keras_chain(model)
    nodes, initializers = [], []
    embedding = next((l for l in chain if isinstance(l, EmbeddingLayer)), None)
    if embedding is not None:
        table = numpy_helper.from_array(embedding.table.astype(np.float32), "embedding_table")
        initializers.append(table)
        graph_input = helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"])
        nodes.append(helper.make_node("Gather", [table.name, "tokens"], ["embedded"]))
        x = "embedded"
    else:
        first = model.lstm_layers[0]
        graph_input = helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                    ["batch", "time", first.input_size])
        x = "X"
    nodes.append(helper.make_node("Transpose", [x], ["x_seq"], perm=[1, 0, 2]))
    x, width = "x_seq", None
    for k, layer in enumerate(l for l in chain if isinstance(l, LSTMLayer)):
        built, tensors, x, _, _ = lstm_layer_nodes(layer, x, f"lstm{k}_", style)
        nodes += built
        initializers += tensors
        width = layer.output_size
    nodes.append(helper.make_node("Transpose", [x], ["y_batch"], perm=[1, 0, 2]))
    x = "y_batch"
    for k, dense in enumerate(l for l in chain if isinstance(l, DenseLayer)):
        weight = numpy_helper.from_array(dense.W.materialize(np.float32).T.copy(), f"dense{k}_W")
        initializers.append(weight)
        x_next = f"dense{k}_out"
        nodes.append(helper.make_node("MatMul", [x, weight.name], [x_next + "_mm"]))
        if dense.b is not None:
            bias = numpy_helper.from_array(np.asarray(dense.b, np.float32), f"dense{k}_b")
            initializers.append(bias)
            nodes.append(helper.make_node("Add", [x_next + "_mm", bias.name], [x_next]))
        else:
            nodes.append(helper.make_node("Identity", [x_next + "_mm"], [x_next]))
        x, width = _head_activation(nodes, dense, x_next), dense.W.shape[0]
    nodes.append(helper.make_node("Identity", [x], ["Y"]))
    graph = helper.make_graph(nodes, "rnnshrink_keras_model", [graph_input],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT,
                                                             ["batch", "time", width])],
                              initializers)
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, producer_name="rnnshrink",
                             producer_version=__version__,
                             ir_version=helper.find_min_ir_version_for(opsets))


def _head_activation(nodes, dense, x):
    name = dense.source.get("activation") or (dense.activation.name if dense.activation else "linear")
    if name == "linear":
        return x
    if name not in _HEAD_ACTIVATIONS:
        raise OptionError(f"layer {dense.name}: activation {name} has no ONNX export here")
    nodes.append(helper.make_node(_HEAD_ACTIVATIONS[name], [x], [x + "_act"],
                                  **({"axis": -1} if name == "softmax" else {})))
    return x + "_act"


def _keras_chain(model):
    """The layers of a Keras full model rnnshrink can export whole, in order; else None."""
    if not model.format.startswith("keras") or model.topology != "known":
        return None
    chain = []
    for layer in model.layers:
        if isinstance(layer, OtherLayer):
            if layer.source.get("class_name") not in _KERAS_PASSIVE:
                return None
            continue
        if len(layer.inputs or []) > 1:
            return None
        chain.append(layer)
    kinds = [type(l) for l in chain]
    lstm = [k for k, kind in enumerate(kinds) if kind is LSTMLayer]
    if not lstm or any(kind is EmbeddingLayer for kind in kinds[lstm[0]:]) \
            or any(kind is LSTMLayer for kind in kinds[lstm[-1]:][1:]) \
            or any(kind is DenseLayer for kind in kinds[:lstm[-1]]) \
            or kinds[:lstm[0]].count(EmbeddingLayer) > 1:
        return None
    return chain


def _at_opset(original, opset, source):
    proto = onnx.ModelProto()
    proto.CopyFrom(original)
    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    if current >= opset:
        return proto
    inline_all(source, tensor_protos(proto.graph))  # the converter reads initializers
    try:
        return version_converter.convert_version(proto, opset)
    except Exception as error:  # the converter raises plain RuntimeErrors for unsupported ops
        raise OptionError(f"cannot raise the graph's opset from {current} to {opset} for the "
                          f"compact export ({error}); try --onnx-style folded") from None


def _safe(name):
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_") or "lstm"


def _shape(value):
    dims = value.type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]
