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

Weights are rebuilt once per run, outside the ``Scan``, from initializers holding exactly what
the weight object counts (:attr:`Weight.nbytes`):

==========  ====================================================================================
Dense       values at the stored dtype (float64 as float32); float16 / bfloat16 then ``Cast``
LowRank     each factor as its own kind, multiplied by ``Gemm`` (or used factored, above)
Sparse      kept values + the index of :func:`index_encoding` — a bitmask (uint8, unpacked by
            BitShift / BitwiseAnd / NonZero) or CSR (uint8 / uint16 / int32 columns, int32 row
            pointers, rows recovered by ScatterElements(add) + CumSum) — then ScatterElements
            into zeros; stored dense when that is not smaller
Quantized   codes as ``INT4`` (bits <= 4, two per byte) or ``INT8``; float16 steps ``Cast`` to
            float32; ``DequantizeLinear`` per tensor, per row (``axis``) or per group of columns
            (``block_size``, opset 21); with a mask, the kept codes scattered like Sparse and
            multiplied by the expanded steps (unmasked when that is not larger)
==========  ====================================================================================

Codes of 2 and 3 bits thus take 4 bits in the file and 5 to 7 bits take 8: ONNX has no
narrower integer type that onnxruntime dequantizes at opset 21.

References
----------
ONNX operator specs ``LSTM``, ``Scan``, ``DequantizeLinear`` (opset 21 blocked quantization,
``INT4``), ``ScatterElements``; onnxruntime ``rnn_helpers.cc`` (activation parameters).
"""

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__
from ..errors import OptionError, RnnshrinkError
from ..model.weights import Dense, LowRank, Quantized, Sparse, index_encoding, to_bfloat16_bits
from .atomic import atomic_path
from .gates import CANONICAL, reorder
from .exporting import lstm_stack

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
_COLUMN_DTYPES = {0: np.uint8, 1: np.uint8, 2: np.uint16, 4: np.int32}  # CSR index bytes -> dtype
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
    graph = _Graph(prefix)
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


class _Graph:
    """Nodes and initializers under construction, every name starting with ``prefix``."""

    def __init__(self, prefix):
        self.prefix, self.nodes, self.initializers, self._count = prefix, [], [], 0
        self._small = {}  # (dtype, shape, bytes) -> name of a small constant, made once

    def name(self, hint):
        self._count += 1
        return f"{self.prefix}{hint}{self._count}"

    def const(self, array, hint="const"):
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 4 else None
        if key not in self._small:
            name = self.name(hint)
            self.initializers.append(numpy_helper.from_array(array, name))
            if key is None:
                return name
            self._small[key] = name
        return self._small[key]

    def raw(self, data_type, shape, data, hint):
        name = self.name(hint)
        self.initializers.append(helper.make_tensor(name, data_type, shape, data, raw=True))
        return name

    def op(self, op_type, inputs, outputs=1, **attributes):
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=names[0], **attributes))
        return names[0] if outputs == 1 else names


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _ints(*values):
    return np.array(values, np.int64)


# ---- layers ------------------------------------------------------------------------------

def _lstm_op_layer(g, layer, x, initial_h=None, initial_c=None):
    rows = reorder(np.arange(4 * layer.hidden_size), CANONICAL, "onnx")
    directions = [_permuted(d, rows) for d in layer.directions]
    bias = np.stack([np.concatenate([d.b, np.zeros_like(d.b)]) for d in directions])
    inputs = [x, _stacked(g, [d.W for d in directions]), _stacked(g, [d.R for d in directions]),
              g.const(bias.astype(np.float32), "B")]
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
        return g.op("Squeeze", [y, g.const(_ints(1))]), h, c
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3])
    return g.op("Reshape", [y, g.const(_ints(0, 0, -1))]), h, c


def _direction(layer):
    return ("bidirectional" if layer.num_directions == 2
            else "reverse" if layer.reverse_only else "forward")


def _parameter(function, parameter):
    value = getattr(function, parameter)
    return float((1.0 if parameter == "alpha" else 0.0) if value is None else value)


def _scan_layer(g, layer, x, initial_h=None, initial_c=None):
    dirs, hidden, out = layer.num_directions, layer.hidden_size, layer.out_size
    rows = reorder(np.arange(4 * hidden), CANONICAL, _SCAN_ORDER)
    directions = [_permuted(d, rows) for d in layer.directions]
    # X Wᵀ + b as Gemm on (T * N, input): Gemm keeps onnxruntime from fusing DequantizeLinear
    # -> MatMul into a MatMulNBits that rounds X to 8 bits
    rows_in = g.op("Reshape", [x, g.const(_ints(-1, layer.input_size))])
    shape = g.op("Concat", [g.op("Shape", [x], end=2), g.const(_ints(4 * hidden))], axis=0)
    sequences = []
    for k, direction in enumerate(directions):
        W = direction.W
        factors = [W.V, W.U] if isinstance(W, LowRank) else [W]
        xw = rows_in
        for factor in factors:
            bias = [g.const(direction.b.astype(np.float32), "b")] if factor is factors[-1] else []
            xw = g.op("Gemm", [xw, _matrix(g, factor)] + bias, transB=1)
        xw = g.op("Reshape", [xw, shape])  # (T, N, 4H)
        sequences.append(_reversed(g, xw) if k else xw)
    # two directions: states (dirs, N, .) and a batched MatMul; one: (N, .) and a Gemm adding
    # h Rᵀ to xw_t
    stacked = dirs > 1
    if stacked:
        one = g.const(_ints(1))
        xw = g.op("Concat", [g.op("Unsqueeze", [s, one]) for s in sequences], axis=1)
    lead = [g.const(_ints(dirs))] if stacked else []
    batch = g.op("Shape", [x], start=1, end=2)
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    states = []
    for given, width in ((initial_h, out), (initial_c, hidden)):
        if given and stacked:
            states.append(given)
        elif given:  # (1, batch, width) -> (batch, width)
            states.append(g.op("Squeeze", [given, g.const(_ints(0))]))
        else:
            shape = g.op("Concat", lead + [batch, g.const(_ints(width))], axis=0)
            states.append(g.op("ConstantOfShape", [shape], value=zero))
    recurrent = _factors(g, [d.R for d in directions], stacked)
    projection = _factors(g, [d.proj for d in directions], stacked) if layer.proj_size else []
    body = _scan_body(layer, recurrent, projection, g.name("body") + "_")
    reverse = [1] if layer.reverse_only else [0]
    h, c, y = g.op("Scan", states + [xw], outputs=3, body=body, num_scan_inputs=1,
                   scan_input_directions=reverse, scan_output_directions=reverse)
    if not stacked:  # y: (T, N, out), else (T, dirs, N, out)
        zero_axis = g.const(_ints(0))
        return y, g.op("Unsqueeze", [h, zero_axis]), g.op("Unsqueeze", [c, zero_axis])
    forward, backward = (g.op("Gather", [y, g.const(np.int64(k))], axis=1) for k in (0, 1))
    return g.op("Concat", [forward, _reversed(g, backward)], axis=2), h, c


def _reversed(g, x):
    """``x`` with its first (time) axis reversed."""
    return g.op("Slice", [x, g.const(_ints(-1)), g.const(_ints(np.iinfo(np.int64).min)),
                          g.const(_ints(0)), g.const(_ints(-1))])


def _scan_body(layer, recurrent, projection, prefix):
    """The Scan body: states ``h ([dirs,] N, out)``, ``c ([dirs,] N, H)``; input
    ``xw_t ([dirs,] N, 4H)``; ``dirs`` only for two directions."""
    g = _Graph(prefix)
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
    gates, candidate = g.op("Split", [z, g.const(_ints(3 * hidden, hidden))], outputs=2, axis=-1)
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


# ---- weights -----------------------------------------------------------------------------

def _permuted(direction, rows):
    """``direction`` with the gate rows of W, R and b taken in the order ``rows``."""
    return dataclasses.replace(direction, W=_permute_rows(direction.W, rows),
                               R=_permute_rows(direction.R, rows), b=direction.b[rows])


def _permute_rows(weight, rows):
    if isinstance(weight, LowRank):
        return LowRank(_permute_rows(weight.U, rows), weight.V)
    if isinstance(weight, Dense):
        return Dense(weight.values[rows], weight.stored_dtype)
    if isinstance(weight, Sparse):
        mask = weight.mask[rows]
        return Sparse(mask, weight.materialize()[rows][mask], weight.stored_dtype)
    if isinstance(weight, Quantized):
        steps = weight.steps if weight.steps.shape[0] == 1 else weight.steps[rows]
        mask = None if weight.mask is None else weight.mask[rows]
        return Quantized(weight.codes[rows], steps, weight.bits, weight.group, mask)
    raise OptionError(f"cannot export a weight of kind {weight.kind!r} to ONNX")


def _factors(g, weights, stacked):
    """Tensors ``A_1 .. A_n`` with ``x Mᵀ = x A_1 .. A_n`` for the weights ``M`` of the
    directions: ``(Vᵀ, Uᵀ)`` when all are low-rank of one rank, else ``Mᵀ``; ``stacked``:
    (directions, ., .), else the one direction's 2-D tensors.
    """
    ranks = {w.rank if isinstance(w, LowRank) else None for w in weights}
    parts = [[w.V, w.U] for w in weights] if len(ranks) == 1 and None not in ranks else \
        [[w] for w in weights]
    if not stacked:
        return [_matrix(g, w, transpose=True) for w in parts[0]]
    return [_stacked(g, list(column), transpose=True) for column in zip(*parts)]


def _stacked(g, weights, transpose=False):
    """The matrices of ``weights`` (or their transposes) stacked: (directions, rows, cols)."""
    if all(isinstance(w, Dense) for w in weights) and len({w.stored_dtype for w in weights}) == 1:
        values = np.stack([w.values.T if transpose else w.values for w in weights])
        return _float_tensor(g, values, weights[0].stored_dtype)
    axis = g.const(_ints(0))
    parts = [g.op("Unsqueeze", [_matrix(g, w, transpose), axis]) for w in weights]
    return parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=0)


def _matrix(g, weight, transpose=False):
    """A float32 tensor holding ``weight`` (or its transpose), rebuilt from compact initializers."""
    if isinstance(weight, LowRank):
        first, second = (weight.V, weight.U) if transpose else (weight.U, weight.V)
        return g.op("Gemm", [_matrix(g, first, transpose), _matrix(g, second, transpose)])
    if isinstance(weight, Dense):
        return _float_tensor(g, weight.values.T if transpose else weight.values,
                             weight.stored_dtype)
    if isinstance(weight, Sparse):
        dense = Dense(weight.materialize(np.float32), weight.stored_dtype)
        if weight.nbytes >= dense.nbytes:
            return _matrix(g, dense, transpose)
    if isinstance(weight, Quantized):
        plain = Quantized(weight.codes, weight.steps, weight.bits, weight.group)
        if weight.mask is None or weight.nbytes >= plain.nbytes:
            return _dequantized(g, plain, transpose)
    matrix = _scattered(g, weight)
    return g.op("Transpose", [matrix]) if transpose else matrix


def _float_tensor(g, values, stored_dtype):
    if stored_dtype == "float16":
        return g.op("Cast", [g.const(values.astype(np.float16), "w")], to=TensorProto.FLOAT)
    if stored_dtype == "bfloat16":
        bits = g.raw(TensorProto.BFLOAT16, values.shape, to_bfloat16_bits(values).tobytes(), "w")
        return g.op("Cast", [bits], to=TensorProto.FLOAT)
    return g.const(values.astype(np.float32), "w")


def _codes(g, codes, bits):
    """An INT4 (bits <= 4, packed two per byte, low nibble first) or INT8 initializer."""
    if bits > 4:
        return g.const(codes.astype(np.int8), "codes")
    nibbles = codes.astype(np.uint8).ravel() & 0x0F
    nibbles = np.append(nibbles, np.uint8(0)) if nibbles.size % 2 else nibbles
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return g.raw(TensorProto.INT4, codes.shape, packed.tobytes(), "codes")


def _steps(g, steps):
    """float16 steps (stored) cast to float32 (dequantizing with float16 scales would round)."""
    return g.op("Cast", [g.const(steps.astype(np.float16), "steps")], to=TensorProto.FLOAT)


def _dequantized(g, weight, transpose):
    codes, steps = weight.codes, weight.steps
    if steps.size == 1:
        scale, attributes = steps.reshape(()), {}
    elif steps.shape[1] == 1:
        scale, attributes = steps[:, 0], {"axis": 1 if transpose else 0}
    else:
        scale = steps.T if transpose else steps
        attributes = {"axis": 0 if transpose else 1, "block_size": weight.group}
    codes = codes.T if transpose else codes
    return g.op("DequantizeLinear", [_codes(g, codes, weight.bits), _steps(g, scale)],
                **attributes)


def _scattered(g, weight):
    """A Sparse or masked Quantized weight: kept values scattered into zeros (rows, cols)."""
    mask = weight.mask
    rows, cols = mask.shape
    if isinstance(weight, Sparse):
        values = _float_tensor(g, weight.values, weight.stored_dtype)
    else:
        values = g.op("DequantizeLinear", [_codes(g, weight.codes[mask], weight.bits),
                                           g.const(np.float32(1.0), "one")])
    zeros = g.op("ConstantOfShape", [g.const(_ints(mask.size))],
                 value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    flat = g.op("ScatterElements", [zeros, _positions(g, mask), values], axis=0)
    matrix = g.op("Reshape", [flat, g.const(_ints(rows, cols))])
    if isinstance(weight, Sparse):
        return matrix
    steps = weight.steps
    if steps.shape[1] > 1:  # (rows, groups) -> (rows, cols)
        groups = steps.shape[1]
        steps = g.op("Expand", [_steps(g, steps[:, :, None]),
                                g.const(_ints(rows, groups, weight.group))])
        steps = g.op("Reshape", [steps, g.const(_ints(rows, groups * weight.group))])
        steps = g.op("Slice", [steps, g.const(_ints(0)), g.const(_ints(cols)), g.const(_ints(1))])
    else:
        steps = _steps(g, steps)
    return g.op("Mul", [matrix, steps])


def _positions(g, mask):
    """int64 (nnz,) row-major positions of the kept entries, rebuilt from the index that
    :func:`index_encoding` picks."""
    rows, cols = mask.shape
    if index_encoding(mask)[0] == "bitmask":
        packed = g.const(np.packbits(mask.ravel())[:, None], "bitmask")  # first entry = top bit
        bits = g.op("BitShift", [packed, g.const(np.arange(7, -1, -1, dtype=np.uint8))],
                    direction="RIGHT")
        bits = g.op("BitwiseAnd", [bits, g.const(np.uint8(1))])
        found = g.op("NonZero", [g.op("Reshape", [bits, g.const(_ints(-1))])])
        return g.op("Reshape", [found, g.const(_ints(-1))])
    kept_rows, kept_cols = np.nonzero(mask)
    # bytes per column index, from the count CSR is stored at (0 when nothing is kept)
    width = (index_encoding(mask)[1] - 4 * (rows + 1)) // max(kept_rows.size, 1)
    pointers = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32)
    columns = g.const(kept_cols.astype(_COLUMN_DTYPES[width]), "columns")
    starts = g.op("Cast", [g.op("Slice", [g.const(pointers, "pointers"), g.const(_ints(1)),
                                          g.const(_ints(rows))])], to=TensorProto.INT64)
    zeros, ones = (g.op("ConstantOfShape", [g.const(_ints(size))],
                        value=helper.make_tensor("v", TensorProto.INT64, [1], [value]))
                   for size, value in ((kept_rows.size + 1, 0), (rows - 1, 1)))
    marks = g.op("ScatterElements", [zeros, starts, ones], axis=0, reduction="add")
    row = g.op("Slice", [g.op("CumSum", [marks, g.const(np.int64(0))]), g.const(_ints(0)),
                         g.const(_ints(kept_rows.size))])
    columns = g.op("Cast", [columns], to=TensorProto.INT64)
    return g.op("Add", [g.op("Mul", [row, g.const(np.int64(cols))]), columns])
