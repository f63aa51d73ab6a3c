"""Export a model's LSTM stack to ONNX for onnxruntime, compressed layers at their stored size.

The graph
---------
* input ``X``: float32 ``(time, batch, input)``, seq-first like the ONNX ``LSTM`` op
  (``layout = 0``), ``time`` and ``batch`` symbolic;
* outputs ``Y``: ``(time, batch, directions * out)``, the output sequence of the last LSTM layer;
  ``h_<k>``: ``(directions, batch, out)`` and ``c_<k>``: ``(directions, batch, hidden)``, the
  final states of LSTM layer ``k`` (``model.lstm_layers`` order, from 0).

The layers run in ``model.lstm_layers`` order, each fed the previous one's output; other layers
(embeddings, heads) are not exported. :func:`lstm_layer_nodes` builds one layer for any graph.
A Slim LSTM variant is exported as the standard LSTM it is (its gated matrices materialized,
:func:`~rnnshrink.io.exporting.standard_lstm`): a dense layer, so the ``LSTM`` op.

Styles, chosen per layer (``"auto"``: the ``LSTM`` op for dense layers, ``"scan"`` otherwise)
-------------------------------------------------------------------------------------------
``LSTM`` op
    A dense layer (every matrix a :class:`Dense`, no projection): ``W (dirs, 4H, input)``,
    ``R (dirs, 4H, H)``, ``B = b || 0`` in ONNX gate order i, o, f, c; activations and ``clip``
    as attributes (``activation_alpha`` / ``activation_beta`` list the parameters of the
    functions that take them, in order, as onnxruntime consumes them).
``"scan"``
    ``xw = X Wᵀ + b`` for all steps as one Gemm on ``(time * batch, input)`` (two for a low-rank
    ``W``: ``(X Vᵀ) Uᵀ``) outside the recurrence — Gemm, not MatMul: onnxruntime rewrites
    DequantizeLinear -> MatMul into a MatMulNBits that rounds ``X`` to 8 bits — then one
    ``Scan`` over time. One direction: state ``h (batch, out)``, ``c (batch, H)``, and a Gemm
    adds ``h Rᵀ`` to ``xw_t``. Two directions advance in the same step: state ``(2, batch, .)``,
    batched MatMul, the backward input time-reversed before and its output after. A
    reverse-only layer sets ``scan_input_directions = scan_output_directions = 1``. The body::

        z = xw_t + h Rᵀ   (h Vᵀ Uᵀ when every direction's R has the same rank)  [Clip]
        s = f(z[:, :3H]) = [i | f | o]      g = g(z[:, 3H:])     gate rows stored as i, f, o, g
        c = f c + i g     m = o h(c)        h = m projᵀ (when the layer has a projection)
``"folded"``
    The ``LSTM`` op fed by W and R rebuilt in the graph from the compact initializers (rows
    stored already in ONNX gate order): small file, dense speed. A projection cannot be folded
    into the op: such layers are refused (use ``"scan"`` or ``"auto"``).

Weights are rebuilt once per run, outside the ``Scan``, from compact initializers: see
:mod:`rnnshrink.io.onnx_weights`.

References
----------
ONNX operator specs ``LSTM``, ``Scan``, ``DequantizeLinear`` (opset 21 blocked quantization,
``INT4``), ``ScatterElements``; onnxruntime ``rnn_helpers.cc`` (activation parameters).
"""

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import __version__
from ..errors import OptionError, RnnshrinkError
from ..model.weights import Dense, LowRank
from .atomic import atomic_path
from .gates import CANONICAL, reorder
from .exporting import lstm_stack, standard_lstm
from .onnx_weights import Graph, factor_tensors, ints, matrix_tensor, permuted, stacked_tensor

STYLES = ("auto", "scan", "folded")
MIN_OPSET = 21  # INT4 and blocked DequantizeLinear
_SCAN_ORDER = "ifog"  # the three sigmoid gates contiguous, then the cell candidate
# IR activation -> (LSTM op activation, parameters it takes, single ONNX op or None)
_ACTIVATIONS = {
    "sigmoid": ("Sigmoid", (), "Sigmoid"),
    "tanh": ("Tanh", (), "Tanh"),
    "relu": ("Relu", (), "Relu"),
    "hard_sigmoid": ("HardSigmoid", ("alpha", "beta"), "HardSigmoid"),
    "linear": ("Affine", ("alpha", "beta"), "Identity"),
    "affine": ("Affine", ("alpha", "beta"), None),
    "scaled_tanh": ("ScaledTanh", ("alpha", "beta"), None),
    "leaky_relu": ("LeakyRelu", ("alpha",), "LeakyRelu"),
    "thresholded_relu": ("ThresholdedRelu", ("alpha",), "ThresholdedRelu"),
    "elu": ("Elu", ("alpha",), "Elu"),
    "softsign": ("Softsign", (), "Softsign"),
    "softplus": ("Softplus", (), "Softplus"),
}
_DEFAULT_ACTIVATIONS = ("sigmoid", "tanh", "tanh")
_PROTOBUF_LIMIT = 2**31


def export_stack(model, output, style="auto", opset=MIN_OPSET):
    """Write the LSTM stack of ``model`` as an ONNX file (see the module docstring).

    Parameters
    ----------
    model : Model
    output : str or os.PathLike
        Written atomically; an existing file is replaced.
    style : {"auto", "scan", "folded"}
    opset : int
        ONNX opset of the default domain, at least 21.

    Raises
    ------
    OptionError
        Bad style or opset, LSTM layers that do not chain, a projection with ``"folded"``.
    """
    proto = build_stack(model, style, opset)
    if proto.ByteSize() >= _PROTOBUF_LIMIT:
        raise OptionError("the exported graph exceeds protobuf's 2 GB limit")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise RnnshrinkError(f"the exported ONNX graph fails onnx.checker: {error}") from None
    with atomic_path(output) as temporary:
        temporary.write_bytes(proto.SerializeToString())


def build_stack(model, style="auto", opset=MIN_OPSET):
    """The ONNX model :func:`export_stack` writes, as an ``onnx.ModelProto``."""
    _check_options(style, opset)
    layers = lstm_stack(model)
    for layer in layers:
        _layer_style(layer, style)
    nodes, initializers, outputs = [], [], []
    x = "X"
    for k, layer in enumerate(layers):
        found, tensors, x, h, c = lstm_layer_nodes(layer, x, f"lstm{k}_", style)
        nodes += found + [helper.make_node("Identity", [h], [f"h_{k}"]),
                          helper.make_node("Identity", [c], [f"c_{k}"])]
        initializers += tensors
        outputs += [_value(f"h_{k}", [layer.num_directions, "batch", layer.out_size]),
                    _value(f"c_{k}", [layer.num_directions, "batch", layer.hidden_size])]
    nodes.append(helper.make_node("Identity", [x], ["Y"]))
    graph = helper.make_graph(
        nodes, "rnnshrink_lstm_stack",
        [_value("X", ["time", "batch", layers[0].input_size])],
        [_value("Y", ["time", "batch", layers[-1].output_size])] + outputs,
        initializers, doc_string=f"LSTM layers {', '.join(layer.name for layer in layers)}")
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, producer_name="rnnshrink",
                             producer_version=__version__,
                             ir_version=helper.find_min_ir_version_for(opsets))


def lstm_layer_nodes(layer, x_name, prefix, style="auto", initial_h=None, initial_c=None):
    """The nodes and initializers of one LSTM layer, for use inside any graph.

    Parameters
    ----------
    layer : LSTMLayer
    x_name : str
        Input tensor, float32 of shape (time, batch, layer.input_size).
    prefix : str
        Starts every tensor and node name made here; must be unique in the graph.
    style : {"auto", "scan", "folded"}
    initial_h, initial_c : str, optional
        Initial states, shapes (directions, batch, out) and (directions, batch, hidden), as the
        ONNX ``LSTM`` op takes them; zeros when omitted.

    Returns
    -------
    nodes : list of onnx.NodeProto
    initializers : list of onnx.TensorProto
    y_name : str
        Output sequence, shape (time, batch, directions * out).
    h_name, c_name : str
        Final states, shapes (directions, batch, out) and (directions, batch, hidden).
    """
    graph = Graph(prefix)
    layer = standard_lstm(layer)
    build = _lstm_op_layer if _layer_style(layer, style) == "lstm" else _scan_layer
    y, h, c = build(graph, layer, x_name, initial_h, initial_c)
    return graph.nodes, graph.initializers, y, h, c


def _check_options(style, opset):
    if style not in STYLES:
        raise OptionError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    latest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= latest:
        raise OptionError(f"opset must be in [{MIN_OPSET}, {latest}], got {opset!r}")


def _layer_style(layer, style):
    """``"lstm"`` (the LSTM op) or ``"scan"`` for ``layer`` exported in ``style``."""
    dense = layer.proj_size == 0 and all(
        isinstance(m, Dense) for d in layer.directions for m in d.matrices.values())
    if style == "folded" and layer.proj_size:
        raise OptionError(f"layer {layer.name} has a projection, which the ONNX LSTM op cannot "
                          "hold; export it with style 'scan' or 'auto'")
    return "lstm" if style == "folded" or (style == "auto" and dense) else "scan"


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


# ---- layers ------------------------------------------------------------------------------

def _lstm_op_layer(g, layer, x, initial_h=None, initial_c=None):
    rows = reorder(np.arange(4 * layer.hidden_size), CANONICAL, "onnx")
    directions = [permuted(d, rows) for d in layer.directions]
    bias = np.stack([np.concatenate([d.b, np.zeros_like(d.b)]) for d in directions])
    inputs = [x, stacked_tensor(g, [d.W for d in directions]),
              stacked_tensor(g, [d.R for d in directions]), g.const(bias.astype(np.float32), "B")]
    if initial_h or initial_c:
        inputs += ["", initial_h or "", initial_c or ""]
    attributes = {"hidden_size": layer.hidden_size, "direction": _direction(layer)}
    functions = (layer.gate_activation, layer.cell_activation, layer.hidden_activation)
    if tuple(f.name for f in functions) != _DEFAULT_ACTIVATIONS:
        found = {"activations": [], "activation_alpha": [], "activation_beta": []}
        for function in functions * layer.num_directions:
            onnx_name, parameters, _ = _ACTIVATIONS[function.name]
            found["activations"].append(onnx_name)
            for parameter in parameters:
                found[f"activation_{parameter}"].append(_parameter(function, parameter))
        attributes.update({key: value for key, value in found.items() if value})
    if layer.clip is not None:
        attributes["clip"] = float(layer.clip)
    y, h, c = g.op("LSTM", inputs, outputs=3, **attributes)  # Y (time, dirs, batch, H)
    if layer.num_directions == 1:
        return g.op("Squeeze", [y, g.const(ints(1))]), h, c
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3])
    return g.op("Reshape", [y, g.const(ints(0, 0, -1))]), h, c


def _direction(layer):
    return ("bidirectional" if layer.num_directions == 2
            else "reverse" if layer.reverse_only else "forward")


def _parameter(function, parameter):
    value = getattr(function, parameter)
    return float((1.0 if parameter == "alpha" else 0.0) if value is None else value)


def _scan_layer(g, layer, x, initial_h=None, initial_c=None):
    dirs, hidden, out = layer.num_directions, layer.hidden_size, layer.out_size
    rows = reorder(np.arange(4 * hidden), CANONICAL, _SCAN_ORDER)
    directions = [permuted(d, rows) for d in layer.directions]
    # X Wᵀ + b as Gemm on (T * N, input): Gemm keeps onnxruntime from fusing DequantizeLinear
    # -> MatMul into a MatMulNBits that rounds X to 8 bits
    rows_in = g.op("Reshape", [x, g.const(ints(-1, layer.input_size))])
    shape = g.op("Concat", [g.op("Shape", [x], end=2), g.const(ints(4 * hidden))], axis=0)
    sequences = []
    for k, direction in enumerate(directions):
        W = direction.W
        factors = [W.V, W.U] if isinstance(W, LowRank) else [W]
        xw = rows_in
        for factor in factors:
            bias = [g.const(direction.b.astype(np.float32), "b")] if factor is factors[-1] else []
            xw = g.op("Gemm", [xw, matrix_tensor(g, factor)] + bias, transB=1)
        xw = g.op("Reshape", [xw, shape])  # (T, N, 4H)
        sequences.append(_reversed(g, xw) if k else xw)
    # two directions: states (dirs, N, .) and a batched MatMul; one: (N, .) and a Gemm adding
    # h Rᵀ to xw_t
    stacked = dirs > 1
    if stacked:
        one = g.const(ints(1))
        xw = g.op("Concat", [g.op("Unsqueeze", [s, one]) for s in sequences], axis=1)
    lead = [g.const(ints(dirs))] if stacked else []
    batch = g.op("Shape", [x], start=1, end=2)
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    states = []
    for given, width in ((initial_h, out), (initial_c, hidden)):
        if given and stacked:
            states.append(given)
        elif given:  # (1, batch, width) -> (batch, width)
            states.append(g.op("Squeeze", [given, g.const(ints(0))]))
        else:
            shape = g.op("Concat", lead + [batch, g.const(ints(width))], axis=0)
            states.append(g.op("ConstantOfShape", [shape], value=zero))
    recurrent = factor_tensors(g, [d.R for d in directions], stacked)
    projection = factor_tensors(g, [d.proj for d in directions], stacked) if layer.proj_size else []
    body = _scan_body(layer, recurrent, projection, g.name("body") + "_")
    reverse = [1] if layer.reverse_only else [0]
    h, c, y = g.op("Scan", states + [xw], outputs=3, body=body, num_scan_inputs=1,
                   scan_input_directions=reverse, scan_output_directions=reverse)
    if not stacked:  # y: (T, N, out), else (T, dirs, N, out)
        zero_axis = g.const(ints(0))
        return y, g.op("Unsqueeze", [h, zero_axis]), g.op("Unsqueeze", [c, zero_axis])
    forward, backward = (g.op("Gather", [y, g.const(np.int64(k))], axis=1) for k in (0, 1))
    return g.op("Concat", [forward, _reversed(g, backward)], axis=2), h, c


def _reversed(g, x):
    """``x`` with its first (time) axis reversed."""
    return g.op("Slice", [x, g.const(ints(-1)), g.const(ints(np.iinfo(np.int64).min)),
                          g.const(ints(0)), g.const(ints(-1))])


def _scan_body(layer, recurrent, projection, prefix):
    """The Scan body: states ``h ([dirs,] N, out)``, ``c ([dirs,] N, H)``; input
    ``xw_t ([dirs,] N, 4H)``; ``dirs`` only for two directions."""
    g = Graph(prefix)
    dirs, hidden, out = layer.num_directions, layer.hidden_size, layer.out_size
    h, c, xw = (f"{prefix}{name}" for name in ("h", "c", "xw"))
    z = h
    for factor in recurrent[:-1]:
        z = g.op("MatMul", [z, factor])
    z = (g.op("Add", [xw, g.op("MatMul", [z, recurrent[-1]])]) if dirs > 1
         else g.op("Gemm", [z, recurrent[-1], xw]))
    if layer.clip is not None:
        bound = np.float32(layer.clip)
        z = g.op("Clip", [z, g.const(-bound, "low"), g.const(bound, "high")])
    gates, candidate = g.op("Split", [z, g.const(ints(3 * hidden, hidden))], outputs=2, axis=-1)
    i, f, o = g.op("Split", [_activation(g, layer.gate_activation, gates)], outputs=3, axis=-1,
                   num_outputs=3)
    candidate = _activation(g, layer.cell_activation, candidate)
    c_new = g.op("Add", [g.op("Mul", [f, c]), g.op("Mul", [i, candidate])])
    h_new = g.op("Mul", [o, _activation(g, layer.hidden_activation, c_new)])
    for factor in projection:
        h_new = g.op("MatMul", [h_new, factor])
    y = g.op("Identity", [h_new])
    shapes = {h: out, c: hidden, xw: 4 * hidden, h_new: out, c_new: hidden, y: out}
    inputs, outputs = [h, c, xw], [h_new, c_new, y]
    lead = [dirs] if dirs > 1 else []
    return helper.make_graph(
        g.nodes, prefix, [_value(n, lead + [None, shapes[n]]) for n in inputs],
        [_value(n, lead + [None, shapes[n]]) for n in outputs], g.initializers)


def _activation(g, function, x):
    _, parameters, single = _ACTIVATIONS[function.name]
    if single is not None:
        used = () if single == "Identity" else parameters
        return g.op(single, [x], **{p: _parameter(function, p) for p in used})
    alpha, beta = (g.const(np.float32(_parameter(function, p))) for p in ("alpha", "beta"))
    if function.name == "affine":  # alpha x + beta
        return g.op("Add", [g.op("Mul", [x, alpha]), beta])
    return g.op("Mul", [g.op("Tanh", [g.op("Mul", [x, beta])]), alpha])  # alpha tanh(beta x)
