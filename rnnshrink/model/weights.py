"""Weight matrices that know their own representation.

Every matrix of the IR is a :class:`Weight` of logical shape ``(rows, cols)`` used as ``W @ x``
(PyTorch / ONNX orientation). A weight materializes itself to a dense array, counts the bytes
it occupies when stored (packing, indices and scales included) and the multiply-adds of one
matrix-vector product. Nothing else in rnnshrink computes sizes.

Weights are immutable: transforms build new ones and may share arrays between models.
The kinds:

* :class:`Dense` — a plain matrix, stored at its dtype (float16 storage is how "fp16" is kept);
* :class:`LowRank` — ``U @ V``, each factor itself a Weight (so factors can be quantized);
* :class:`Sparse` — the nonzeros of a pruned matrix plus their positions;
* :class:`Quantized` — integer codes times per-tensor / per-row / per-group steps, optionally
  only at the positions of a mask (a pruned matrix keeps its sparsity);
* :class:`~rnnshrink.model.coded.EntropyCoded` (in :mod:`rnnshrink.model.coded`) — integer
  codes times a step map, the codes entropy coded.
"""

import math
from abc import ABC, abstractmethod

import numpy as np

# Bytes per element of every dtype a checkpoint may store weights in.
DTYPE_BYTES = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
}


def dtype_bytes(dtype_name):
    """Bytes per element of a stored float dtype named as in :data:`DTYPE_BYTES`."""
    try:
        return DTYPE_BYTES[dtype_name]
    except KeyError:
        raise ValueError(
            f"unsupported weight dtype {dtype_name!r}; supported: {', '.join(DTYPE_BYTES)}"
        ) from None


def to_bfloat16_bits(values):
    """Round float values to bfloat16 (nearest, ties to even); returns the raw uint16 bits."""
    bits = np.asarray(values, np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bfloat16_bits(bits):
    """float32 values of raw bfloat16 bits (exact)."""
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def round_to_stored(values, stored_dtype):
    """``values`` rounded to what ``stored_dtype`` can hold, held as float32 (float64 for float64).

    A weight holds exactly what its file stores, so materializing reproduces the file.
    """
    dtype_bytes(stored_dtype)
    values = np.asarray(values)
    if stored_dtype == "float64":
        return values.astype(np.float64, copy=False)
    if stored_dtype == "bfloat16":
        return from_bfloat16_bits(to_bfloat16_bits(values))
    return values.astype(stored_dtype, copy=False).astype(np.float32, copy=False)


class Weight(ABC):
    """A matrix of logical shape ``(rows, cols)`` in some stored representation."""

    kind = "abstract"

    @property
    @abstractmethod
    def shape(self):
        """Logical ``(rows, cols)`` of the materialized matrix."""

    @abstractmethod
    def materialize(self, dtype=np.float64):
        """The dense matrix, ndarray of shape ``self.shape``."""

    @property
    @abstractmethod
    def nbytes(self):
        """Bytes this representation occupies when stored."""

    @property
    @abstractmethod
    def params(self):
        """Number of stored numbers (codes count as numbers, indices do not)."""

    @property
    @abstractmethod
    def macs(self):
        """Multiply-adds of one product ``W @ x`` with a vector ``x``."""

    def operator(self, dtype=np.float64):
        """A function ``x -> x @ W.T`` for ``x`` of shape ``(..., cols)``.

        The default materializes once; kinds with a cheaper product (factors) override it.
        """
        transposed = np.ascontiguousarray(self.materialize(dtype).T)
        return lambda x: x @ transposed

    def describe(self):
        """Representation details for reports, a JSON-serialisable dict."""
        return {"kind": self.kind, "shape": list(self.shape)}


class Dense(Weight):
    """A plain dense matrix.

    Parameters
    ----------
    values : ndarray of shape (rows, cols)
        The weights; rounded to ``stored_dtype`` and held as float32 (float64 for float64).
    stored_dtype : str, optional
        The dtype the file stores them in (e.g. ``"bfloat16"``), for byte counts; defaults to
        the dtype of ``values``.
    """

    kind = "dense"

    def __init__(self, values, stored_dtype=None):
        values = np.asarray(values)
        if values.ndim != 2:
            raise ValueError(f"a weight matrix must be 2-D, got shape {values.shape}")
        if stored_dtype is None:
            stored_dtype = values.dtype.name if values.dtype.name in DTYPE_BYTES else "float32"
        self.values = round_to_stored(values, stored_dtype)
        self.stored_dtype = stored_dtype

    @property
    def shape(self):
        return self.values.shape

    def materialize(self, dtype=np.float64):
        return self.values.astype(dtype, copy=False)

    @property
    def nbytes(self):
        return self.values.size * dtype_bytes(self.stored_dtype)

    @property
    def params(self):
        return self.values.size

    @property
    def macs(self):
        return self.values.size

    def operator(self, dtype=np.float64):
        # one allocation: the transposed copy at ``dtype``, no intermediate materialization
        transposed = self.values.T.astype(dtype, order="C")
        return lambda x: x @ transposed

    def describe(self):
        return {**super().describe(), "dtype": self.stored_dtype}


class LowRank(Weight):
    """A low-rank product ``U @ V``.

    Parameters
    ----------
    U : Weight of shape (rows, rank)
    V : Weight of shape (rank, cols)

    References
    ----------
    Lu, Sindhwani & Sainath, "Learning compact recurrent neural networks", ICASSP 2016,
    W ≈ U V with U ∈ R^{n×r}, V ∈ R^{r×m}.
    """

    kind = "lowrank"

    def __init__(self, U, V):
        U = U if isinstance(U, Weight) else Dense(U)
        V = V if isinstance(V, Weight) else Dense(V)
        if U.shape[1] != V.shape[0]:
            raise ValueError(f"factor shapes do not chain: {U.shape} @ {V.shape}")
        self.U, self.V = U, V

    @property
    def rank(self):
        return self.U.shape[1]

    @property
    def shape(self):
        return (self.U.shape[0], self.V.shape[1])

    def materialize(self, dtype=np.float64):
        return self.U.materialize(dtype) @ self.V.materialize(dtype)

    @property
    def nbytes(self):
        return self.U.nbytes + self.V.nbytes

    @property
    def params(self):
        return self.U.params + self.V.params

    @property
    def macs(self):
        return self.U.macs + self.V.macs

    def operator(self, dtype=np.float64):
        first, second = self.V.operator(dtype), self.U.operator(dtype)
        return lambda x: second(first(x))

    def describe(self):
        return {**super().describe(), "rank": self.rank,
                "U": self.U.describe(), "V": self.V.describe()}


def index_encoding(mask):
    """The cheaper way to store which entries of ``mask`` are kept, and its size in bytes.

    Either CSR (column index per kept entry, 1 / 2 / 4 bytes wide by the column count, plus
    ``rows + 1`` int32 row pointers) or a bitmask (one bit per entry).

    Returns
    -------
    encoding : {"csr", "bitmask"}
    nbytes : int
    """
    rows, cols = mask.shape
    nnz = int(np.count_nonzero(mask))
    column_width = 1 if cols <= 2**8 else 2 if cols <= 2**16 else 4
    csr = nnz * column_width + (rows + 1) * 4
    bitmask = math.ceil(rows * cols / 8)
    return ("csr", csr) if csr < bitmask else ("bitmask", bitmask)


class Sparse(Weight):
    """A pruned matrix: the kept values and their positions.

    Parameters
    ----------
    mask : ndarray of bool, shape (rows, cols)
        Which entries are stored.
    values : ndarray of shape (nnz,)
        The kept entries in row-major order of ``mask``, rounded to ``stored_dtype``.
    stored_dtype : str
        Dtype the values are stored in.
    """

    kind = "sparse"

    def __init__(self, mask, values, stored_dtype="float32"):
        mask = np.asarray(mask, dtype=bool)
        values = round_to_stored(values, stored_dtype)
        if mask.ndim != 2 or values.shape != (np.count_nonzero(mask),):
            raise ValueError(f"values {values.shape} do not match the mask's {np.count_nonzero(mask)} entries")
        self.mask, self.values, self.stored_dtype = mask, values, stored_dtype

    @classmethod
    def from_dense(cls, matrix, mask, stored_dtype="float32"):
        """Keep the entries of ``matrix`` where ``mask`` is true."""
        return cls(mask, np.asarray(matrix)[mask], stored_dtype)

    @property
    def shape(self):
        return self.mask.shape

    @property
    def nnz(self):
        return self.values.size

    @property
    def density(self):
        return self.nnz / max(self.mask.size, 1)

    def materialize(self, dtype=np.float64):
        dense = np.zeros(self.mask.shape, dtype)
        dense[self.mask] = self.values
        return dense

    @property
    def nbytes(self):
        return self.nnz * dtype_bytes(self.stored_dtype) + index_encoding(self.mask)[1]

    @property
    def params(self):
        return self.nnz

    @property
    def macs(self):
        return self.nnz

    def describe(self):
        return {**super().describe(), "dtype": self.stored_dtype,
                "sparsity": round(1.0 - self.density, 6), "index": index_encoding(self.mask)[0]}


class Quantized(Weight):
    """Integer codes times a step per tensor, per output row, or per group of input columns.

    ``W[i, j] = codes[i, j] * steps[i, j // group]`` where ``steps`` has shape ``(1, 1)``
    (per tensor), ``(rows, 1)`` (per row, ``group = cols``) or ``(rows, ceil(cols / group))``.
    Codes lie in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``: the ``2^b - 1`` levels of QuantizedLSTM's
    symmetric quantizer. Stored as ``b``-bit packed codes (only at ``mask`` positions when a
    mask is given, plus the mask's index encoding) and float16 (or float32) steps.

    Parameters
    ----------
    codes : ndarray of int8, shape (rows, cols)
    steps : ndarray of shape (1, 1), (rows, 1) or (rows, groups)
        Stored as ``step_dtype``; the values are rounded to it on construction so that
        materializing reproduces what is stored.
    bits : int
        2 to 8.
    group : int, optional
        Columns per step; ``None`` for per-tensor or per-row steps.
    mask : ndarray of bool, optional
        Stored positions of a pruned matrix; codes outside it must be zero.
    step_dtype : {"float16", "float32"}
        float32 holds the row steps of a re-packed entropy-coded matrix
        (:meth:`~rnnshrink.model.coded.EntropyCoded.fixed_width`) exactly enough.

    References
    ----------
    QuantizedLSTM (ISCAS 2021), ``Q(x; b, a) = round(clamp(x/a, -1+1/s, 1-1/s) s) / s · a`` with
    ``s = 2^(b-1)``.
    """

    kind = "quantized"
    STEP_DTYPES = ("float16", "float32")

    def __init__(self, codes, steps, bits, group=None, mask=None, step_dtype="float16"):
        if step_dtype not in self.STEP_DTYPES:
            raise ValueError(f"step_dtype must be float16 or float32, got {step_dtype!r}")
        codes = np.asarray(codes, dtype=np.int8)
        steps = np.asarray(steps, dtype=step_dtype).astype(np.float32)
        if not 2 <= bits <= 8:
            raise ValueError(f"bits must be in [2, 8], got {bits}")
        limit = 2 ** (bits - 1) - 1
        if codes.ndim != 2 or np.abs(codes.astype(np.int16)).max(initial=0) > limit:
            raise ValueError(f"codes must be a matrix with |code| <= {limit} for {bits} bits")
        rows, cols = codes.shape
        groups = 1 if group is None else math.ceil(cols / group)
        if steps.shape not in ((1, 1), (rows, 1), (rows, groups)):
            raise ValueError(f"steps of shape {steps.shape} do not fit codes {codes.shape}")
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != codes.shape or np.any(codes[~mask]):
                raise ValueError("codes outside the mask must be zero")
        self.codes, self.steps, self.bits, self.group, self.mask = codes, steps, bits, group, mask
        self.step_dtype = step_dtype

    @property
    def shape(self):
        return self.codes.shape

    def step_matrix(self):
        """The step of every entry, ndarray of shape (rows, cols)."""
        rows, cols = self.codes.shape
        width = cols if self.group is None else self.group
        return np.repeat(self.steps, width, axis=1)[:, :cols] if self.steps.shape[1] > 1 \
            else np.broadcast_to(self.steps, (rows, cols))

    def materialize(self, dtype=np.float64):
        return (self.codes * self.step_matrix()).astype(dtype)

    @property
    def stored_codes(self):
        """How many codes are stored: every entry, or the mask's kept ones."""
        return self.codes.size if self.mask is None else int(np.count_nonzero(self.mask))

    @property
    def nbytes(self):
        index = 0 if self.mask is None else index_encoding(self.mask)[1]
        code_bytes = math.ceil(self.stored_codes * self.bits / 8)
        return code_bytes + self.steps.size * dtype_bytes(self.step_dtype) + index

    @property
    def params(self):
        return self.stored_codes

    @property
    def macs(self):
        return self.stored_codes

    def describe(self):
        granularity = ("tensor" if self.steps.size == 1 else
                       "row" if self.steps.shape[1] == 1 else f"group{self.group}")
        found = {**super().describe(), "bits": self.bits, "scales": granularity}
        if self.mask is not None:
            found["sparsity"] = round(1.0 - self.stored_codes / self.codes.size, 6)
        return found
