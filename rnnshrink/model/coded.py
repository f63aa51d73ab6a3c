"""Entropy-coded weights: integer codes on a per-matrix step map, stored rANS coded.

``W[i, j] = codes[i, j] · S[i, j]`` with the step map ``S = δ · 2^(k_i / 8) · 2^(l_j / 8)``
(:func:`step_map`): one float16 ``δ`` per matrix, int8 exponents per row ``k`` and per column
``l``. The codes are entropy coded by :mod:`rnnshrink.coding` (the kept codes only, for a
pruned matrix); the exponents are stored packed (:func:`rnnshrink.coding.pack_bytes`).

References
----------
rnnshrink ``methods.md`` §8 (the step map, entropy-coded codes, re-packing at fixed width for
runtimes without the decoder); Han, Mao & Dally, "Deep Compression", ICLR 2016,
arXiv 1510.00149; Duda, arXiv 1311.2540 (rANS).
"""

import numpy as np

from .. import coding
from ..coding.matrix import checked_codes
from .weights import Quantized, Weight, index_encoding

_EXPONENT_STEPS = 8  # exponents count eighths of an octave
# Entries per run of rows when a matrix is processed piecewise (:func:`row_runs`).
RUN_ENTRIES = 1 << 20


def step_map(delta, row_exp, col_exp):
    """``δ · 2^(k_i / 8) · 2^(l_j / 8)``, float64 of shape (rows, cols).

    Parameters
    ----------
    delta : float
    row_exp : ndarray of int, shape (rows,)
    col_exp : ndarray of int, shape (cols,)
    """
    rows = np.exp2(np.asarray(row_exp, np.float64) / _EXPONENT_STEPS)
    cols = np.exp2(np.asarray(col_exp, np.float64) / _EXPONENT_STEPS)
    return float(delta) * rows[:, None] * cols[None, :]


def row_runs(rows, cols, entries=None):
    """Slices of consecutive rows of a (rows, cols) matrix, about ``entries`` entries each
    (:data:`RUN_ENTRIES` by default; at least one row): how big matrices are processed without
    full-size temporaries."""
    stride = max(1, (entries or RUN_ENTRIES) // max(cols, 1))
    return [slice(start, min(start + stride, rows)) for start in range(0, rows, stride)]


def narrowest(codes):
    """``codes`` as int8 or int16 when their values fit, else as they are (a quarter or half of
    int32's memory for the codes a rate allocation keeps)."""
    codes = np.asarray(codes)
    largest = max(int(codes.max(initial=0)), -int(codes.min(initial=0)))
    for dtype in (np.int8, np.int16):
        if largest <= np.iinfo(dtype).max:
            return codes.astype(dtype, copy=False)
    return codes


def _packed_exponents(row_exp, col_exp):
    """The row then column exponents as int8 bytes, packed (:func:`rnnshrink.coding.pack_bytes`)."""
    return coding.pack_bytes(np.concatenate([np.asarray(row_exp, np.int8),
                                             np.asarray(col_exp, np.int8)]).tobytes())


class EntropyCoded(Weight):
    """Integer codes times a step map, the codes stored entropy coded.

    Encodes on construction (and checks the coded form decodes back exactly), so
    :attr:`nbytes` is the real stored size: the coded codes
    (:attr:`rnnshrink.coding.CodedMatrix.nbytes`), ``δ`` (2 bytes), the packed exponents and,
    for a pruned matrix, the mask's index (:func:`~rnnshrink.model.weights.index_encoding`).

    Parameters
    ----------
    codes : ndarray of int, shape (rows, cols)
        Within ``±(2^31 - 1)``; zero outside ``mask``.
    delta : float
        Positive; rounded to float16.
    row_exp : ndarray of int8, shape (rows,)
    col_exp : ndarray of int8, shape (cols,)
    mask : ndarray of bool, shape (rows, cols), optional
        Stored positions of a pruned matrix.

    References
    ----------
    rnnshrink ``methods.md`` §8; Han, Mao & Dally, arXiv 1510.00149.
    """

    kind = "coded"

    def __init__(self, codes, delta, row_exp, col_exp, mask=None):
        codes, mask = checked_codes(codes, mask)
        self._set_steps(codes.shape, delta, row_exp, col_exp)
        self.coded = coding.encode(codes, mask)
        self.codes = narrowest(codes)

    @classmethod
    def from_coded(cls, coded, delta, row_exp, col_exp):
        """The weight a :class:`~rnnshrink.coding.CodedMatrix` holds (decoded here), with its
        step map; the mask is ``coded.mask``."""
        weight = cls.__new__(cls)
        weight._set_steps(coded.shape, delta, row_exp, col_exp)
        weight.codes, weight.coded = narrowest(coding.decode(coded)), coded
        return weight

    def _set_steps(self, shape, delta, row_exp, col_exp):
        with np.errstate(over="ignore"):
            delta = np.float16(delta)
        if not (np.isfinite(delta) and delta > 0):
            raise ValueError(f"delta must be positive and finite in float16, got {delta}")
        row_exp, col_exp = np.asarray(row_exp), np.asarray(col_exp)
        for name, exponents, size in (("row_exp", row_exp, shape[0]), ("col_exp", col_exp, shape[1])):
            if exponents.shape != (size,) or np.any((exponents < -128) | (exponents > 127)
                                                    | (exponents != np.floor(exponents))):
                raise ValueError(f"{name} must be {size} integers in [-128, 127], got "
                                 f"shape {exponents.shape}")
        self.delta = delta
        self.row_exp, self.col_exp = row_exp.astype(np.int8), col_exp.astype(np.int8)
        self.exponents = _packed_exponents(self.row_exp, self.col_exp)

    @staticmethod
    def side_bytes(row_exp, col_exp, mask=None):
        """Stored bytes besides the coded codes: ``δ`` (2), the packed exponents and, for a
        pruned matrix, the mask's index — what a rate allocation adds to
        :func:`rnnshrink.coding.estimate_bits` without encoding."""
        index = 0 if mask is None else index_encoding(mask)[1]
        return 2 + len(_packed_exponents(row_exp, col_exp)) + index

    @property
    def mask(self):
        return self.coded.mask

    @property
    def shape(self):
        return self.codes.shape

    def step_matrix(self):
        """The step map, float64 of shape (rows, cols)."""
        return step_map(self.delta, self.row_exp, self.col_exp)

    def materialize(self, dtype=np.float64):
        found = np.empty(self.shape, dtype)
        for part in row_runs(*self.shape):
            found[part] = self._product(part)
        return found

    def operator(self, dtype=np.float64):
        # the transposed matrix built a run of rows at a time: one allocation
        transposed = np.empty(self.shape[::-1], dtype)
        for part in row_runs(*self.shape):
            transposed[:, part] = self._product(part).T
        return lambda x: x @ transposed

    def _product(self, part):
        """``codes · S`` of the rows ``part``, float64."""
        return self.codes[part] * step_map(self.delta, self.row_exp[part], self.col_exp)

    @property
    def stored_codes(self):
        """How many codes are stored: every entry, or the mask's kept ones."""
        return self.coded.count

    @property
    def nbytes(self):
        index = 0 if self.mask is None else index_encoding(self.mask)[1]
        return self.coded.nbytes + 2 + len(self.exponents) + index

    @property
    def params(self):
        return self.stored_codes

    @property
    def macs(self):
        return self.stored_codes

    @property
    def bits_per_weight(self):
        """Stored bits (all of :attr:`nbytes`) per stored code."""
        return 8 * self.nbytes / max(self.stored_codes, 1)

    def describe(self):
        found = {**super().describe(), "bits_per_weight": round(self.bits_per_weight, 3),
                 "model": f"gg{self.coded.beta}/{self.coded.axis}"}
        if self.mask is not None:
            found["sparsity"] = round(1.0 - self.stored_codes / max(self.codes.size, 1), 6)
        return found

    def fixed_width(self):
        """The matrix as a fixed-width :class:`Quantized`, for runtimes without the decoder.

        When the step map is per row (all ``col_exp`` equal) and every ``|code| <= 127``, the
        codes themselves at 4 bits (every ``|code| <= 7``) or 8, with the row steps in float32:
        the same matrix up to float32 rounding of the steps. Otherwise the materialized
        matrix re-quantized at 8 bits with a float32 step per row (``max |W_i| / 127``).

        Returns
        -------
        quantized : Quantized
            With this weight's mask.
        exact : bool
            Whether the codes are this weight's own.
        """
        largest = int(np.abs(self.codes.astype(np.int64)).max(initial=0))
        if np.all(self.col_exp == self.col_exp[:1]) and largest <= 127:
            column = self.col_exp[:1] if self.col_exp.size else np.zeros(1, np.int8)
            steps = step_map(self.delta, self.row_exp, column)
            bits = 4 if largest <= 7 else 8
            return Quantized(self.codes.astype(np.int8), steps, bits, mask=self.mask,
                             step_dtype="float32"), True
        values = self.materialize()
        steps = np.abs(values).max(axis=1, initial=0.0)[:, None] / 127
        steps = np.where(steps > 0, steps, 1.0).astype(np.float32)
        codes = np.clip(np.round(values / steps), -127, 127).astype(np.int8)
        return Quantized(codes, steps, 8, mask=self.mask, step_dtype="float32"), False
