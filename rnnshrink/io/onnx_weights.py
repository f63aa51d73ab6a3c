"""Compact ONNX encoding of weight objects, and the graph builder of the ONNX exporter.

Weights are rebuilt once per run, outside the ``Scan``, from initializers holding exactly what
the weight object counts (:attr:`Weight.nbytes`):

==========  ====================================================================================
Dense       values at the stored dtype (float64 as float32); float16 / bfloat16 then ``Cast``
LowRank     each factor as its own kind, multiplied by ``Gemm`` (or used factored, see
            :mod:`rnnshrink.io.onnx_export`)
Sparse      kept values + the index of :func:`index_encoding` — a bitmask (uint8, unpacked by
            BitShift / BitwiseAnd / NonZero) or CSR (uint8 / uint16 / int32 columns, int32 row
            pointers, rows recovered by ScatterElements(add) + CumSum) — then ScatterElements
            into zeros; stored dense when that is not smaller
Quantized   codes as ``INT4`` (bits <= 4, two per byte) or ``INT8``; float16 steps ``Cast`` to
            float32; ``DequantizeLinear`` per tensor, per row (``axis``) or per group of columns
            (``block_size``, opset 21); with a mask, the kept codes scattered like Sparse and
            multiplied by the expanded steps (unmasked when that is not larger)
coded       re-packed at fixed width as the Quantized of
            :meth:`~rnnshrink.model.coded.EntropyCoded.fixed_width` (float32 steps): ONNX
            runtimes have no rANS decoder
==========  ====================================================================================

Codes of 2 and 3 bits thus take 4 bits in the file and 5 to 7 bits take 8: ONNX has no
narrower integer type that onnxruntime dequantizes at opset 21.
"""

import dataclasses

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..errors import OptionError
from ..model.coded import EntropyCoded
from ..model.weights import Dense, LowRank, Quantized, Sparse, index_encoding, to_bfloat16_bits

_COLUMN_DTYPES = {0: np.uint8, 1: np.uint8, 2: np.uint16, 4: np.int32}  # CSR index bytes -> dtype


class Graph:
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


def ints(*values):
    return np.array(values, np.int64)


def permuted(direction, rows):
    """``direction`` with the gate rows of W, R and b taken in the order ``rows``."""
    return dataclasses.replace(direction, W=_permute_rows(direction.W, rows),
                               R=_permute_rows(direction.R, rows), b=direction.b[rows])


def _permute_rows(weight, rows):
    if isinstance(weight, EntropyCoded):
        return _permute_rows(weight.fixed_width()[0], rows)
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
        return Quantized(weight.codes[rows], steps, weight.bits, weight.group, mask,
                         weight.step_dtype)
    raise OptionError(f"cannot export a weight of kind {weight.kind!r} to ONNX")


def factor_tensors(g, weights, stacked):
    """Tensors ``A_1 .. A_n`` with ``x Mᵀ = x A_1 .. A_n`` for the weights ``M`` of the
    directions: ``(Vᵀ, Uᵀ)`` when all are low-rank of one rank, else ``Mᵀ``; ``stacked``:
    (directions, ., .), else the one direction's 2-D tensors.
    """
    ranks = {w.rank if isinstance(w, LowRank) else None for w in weights}
    parts = [[w.V, w.U] for w in weights] if len(ranks) == 1 and None not in ranks else \
        [[w] for w in weights]
    if not stacked:
        return [matrix_tensor(g, w, transpose=True) for w in parts[0]]
    return [stacked_tensor(g, list(column), transpose=True) for column in zip(*parts)]


def stacked_tensor(g, weights, transpose=False):
    """The matrices of ``weights`` (or their transposes) stacked: (directions, rows, cols)."""
    if all(isinstance(w, Dense) for w in weights) and len({w.stored_dtype for w in weights}) == 1:
        values = np.stack([w.values.T if transpose else w.values for w in weights])
        return _float_tensor(g, values, weights[0].stored_dtype)
    axis = g.const(ints(0))
    parts = [g.op("Unsqueeze", [matrix_tensor(g, w, transpose), axis]) for w in weights]
    return parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=0)


def matrix_tensor(g, weight, transpose=False):
    """A float32 tensor holding ``weight`` (or its transpose), rebuilt from compact initializers."""
    if isinstance(weight, EntropyCoded):
        return matrix_tensor(g, weight.fixed_width()[0], transpose)
    if isinstance(weight, LowRank):
        first, second = (weight.V, weight.U) if transpose else (weight.U, weight.V)
        return g.op("Gemm", [matrix_tensor(g, first, transpose),
                             matrix_tensor(g, second, transpose)])
    if isinstance(weight, Dense):
        return _float_tensor(g, weight.values.T if transpose else weight.values,
                             weight.stored_dtype)
    if isinstance(weight, Sparse):
        dense = Dense(weight.materialize(np.float32), weight.stored_dtype)
        if weight.nbytes >= dense.nbytes:
            return matrix_tensor(g, dense, transpose)
    if isinstance(weight, Quantized):
        plain = Quantized(weight.codes, weight.steps, weight.bits, weight.group,
                          step_dtype=weight.step_dtype)
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


def _steps(g, steps, step_dtype):
    """Steps at their stored dtype; float16 ones cast to float32 (dequantizing with float16
    scales would round)."""
    if step_dtype == "float32":
        return g.const(steps.astype(np.float32), "steps")
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
    return g.op("DequantizeLinear", [_codes(g, codes, weight.bits),
                                     _steps(g, scale, weight.step_dtype)],
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
    zeros = g.op("ConstantOfShape", [g.const(ints(mask.size))],
                 value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    flat = g.op("ScatterElements", [zeros, _positions(g, mask), values], axis=0)
    matrix = g.op("Reshape", [flat, g.const(ints(rows, cols))])
    if isinstance(weight, Sparse):
        return matrix
    steps = weight.steps
    if steps.shape[1] > 1:  # (rows, groups) -> (rows, cols)
        groups = steps.shape[1]
        steps = g.op("Expand", [_steps(g, steps[:, :, None], weight.step_dtype),
                                g.const(ints(rows, groups, weight.group))])
        steps = g.op("Reshape", [steps, g.const(ints(rows, groups * weight.group))])
        steps = g.op("Slice", [steps, g.const(ints(0)), g.const(ints(cols)), g.const(ints(1))])
    else:
        steps = _steps(g, steps, weight.step_dtype)
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
        found = g.op("NonZero", [g.op("Reshape", [bits, g.const(ints(-1))])])
        return g.op("Reshape", [found, g.const(ints(-1))])
    kept_rows, kept_cols = np.nonzero(mask)
    # bytes per column index, from the count CSR is stored at (0 when nothing is kept)
    width = (index_encoding(mask)[1] - 4 * (rows + 1)) // max(kept_rows.size, 1)
    pointers = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int32)
    columns = g.const(kept_cols.astype(_COLUMN_DTYPES[width]), "columns")
    starts = g.op("Cast", [g.op("Slice", [g.const(pointers, "pointers"), g.const(ints(1)),
                                          g.const(ints(rows))])], to=TensorProto.INT64)
    zeros, ones = (g.op("ConstantOfShape", [g.const(ints(size))],
                        value=helper.make_tensor("v", TensorProto.INT64, [1], [value]))
                   for size, value in ((kept_rows.size + 1, 0), (rows - 1, 1)))
    marks = g.op("ScatterElements", [zeros, starts, ones], axis=0, reduction="add")
    row = g.op("Slice", [g.op("CumSum", [marks, g.const(np.int64(0))]), g.const(ints(0)),
                         g.const(ints(kept_rows.size))])
    columns = g.op("Cast", [columns], to=TensorProto.INT64)
    return g.op("Add", [g.op("Mul", [row, g.const(np.int64(cols))]), columns])
