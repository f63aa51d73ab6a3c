"""One rate–distortion allocation for every LSTM matrix of a model: the step maps of ECSQ.

Each matrix ``m`` is quantized on a uniform grid with a step per entry, the step map
``S_ij = δ_m · 2^(k_i/8) · 2^(l_j/8)``, and its integer codes are entropy coded. Minimizing
``Σ w_ij (W_ij − Ŵ_ij)² + λ · bits`` over the whole model at high rate (distortion
``S²/12`` per weight, rate ``h − log2 S``) gives ``S_ij² = 6 λ / (ln 2 · w_ij)``: the log2 step
is ``t − ½ log2 w_ij`` with one offset ``t = ½ log2(6 λ / ln 2)`` shared by every matrix. Each
matrix's map ``−½ log2 w`` is fitted by a row effect plus a column effect (the least-squares
two-way additive fit: row means and column means of the map), stored as int8 exponents in
eighths of an octave; the matrix mean goes into ``δ_m``. The offset ``t`` is then bisected on
the coded size until the model has the target number of bytes: one multiplier for the whole
model trades bits between matrices, rows and columns.

:class:`Allocation` gives, for one set of step maps, the codes of every matrix at an offset
(rounded, or GPTQ's), their estimated bytes, the same estimated on a seeded subsample of each
big matrix's rows (:func:`row_sample`, scaled up: the search's cheap curve), and their coded
form. Big matrices are processed a run of rows at a time, so no full-size float temporary is
made; GPTQ's rows are independent, so a subsample's GPTQ codes are the whole matrix's.

References
----------
Gish & Pierce, "Asymptotically efficient quantizing", IEEE Trans. IT 1968 (uniform
quantization with entropy coding is optimal at high rate); Chou, Lookabaugh & Gray,
"Entropy-constrained vector quantization", 1989 (Lagrangian ``D + λR``); Han, Mao & Dally,
"Deep Compression", ICLR 2016 (entropy-coded weights); rnnshrink ``methods.md`` §8 (the step
map, one λ bisected on the real coded bytes, sensitivities ``w``).
"""

import math
from dataclasses import dataclass

import numpy as np

from .. import coding
from ..model.coded import EntropyCoded, narrowest, row_runs, step_map
from .gptq import gptq_round, inverse_cholesky

# Exponents are int8 eighths of an octave: 2^(±127/8) spans a factor of 6e4 either way.
EXPONENT_LIMIT = 127
# The offset t (log2 of the step) is searched in this range; weights are O(1e-3..1e1).
OFFSET_RANGE = (-40.0, 20.0)
# The offset is first found on at most this many codes of each matrix: a seeded, stratified
# subsample of its rows (GPTQ's rows are independent, so their GPTQ codes are the full
# matrix's), the estimated bytes scaled up; then settled on the whole model.
SAMPLE_CODES = 1 << 18
# The slope of the sampled size is read over ± this many octaves.
SLOPE_SPAN = 0.25
# GPTQ in float32 for matrices of at least this many entries (codes differ from float64's only
# at ties).
FLOAT32_ENTRIES = 1 << 20
# Entries of GPTQ's runs of rows (bounds its working memory; rows are independent).
GPTQ_RUN = 1 << 22
# Codes are clamped here (far beyond any budget below 32 bits per weight).
CODE_LIMIT = 2 ** 30


@dataclass(frozen=True)
class StepShape:
    """The λ-free part of a matrix's step map: ``S_ij = 2^(t + mean) · 2^(k_i/8) · 2^(l_j/8)``.

    Attributes
    ----------
    mean : float
        Mean of ``−½ log2 w`` over the matrix.
    row_exp : ndarray of int8, shape (rows,)
    col_exp : ndarray of int8, shape (cols,)
    """

    mean: float
    row_exp: np.ndarray
    col_exp: np.ndarray

    def delta(self, offset):
        """``δ = 2^(t + mean)`` rounded to float16 (what the file stores), as float64."""
        exact = 2.0 ** (offset + self.mean)
        return float(np.float16(min(max(exact, 2.0 ** -24), 65504.0)))

    def steps(self, offset):
        """The step map at offset ``t``, ndarray of float64, shape (rows, cols)."""
        return step_map(self.delta(offset), self.row_exp, self.col_exp)


def step_shape(w):
    """Fit ``−½ log2 w_ij ≈ mean + k_i/8 + l_j/8`` (row and column effects, least squares).

    Parameters
    ----------
    w : ndarray of shape (rows, cols), positive
        Sensitivity of each weight (a broadcast view is fine; it is read a run of rows at a
        time, so no full-size temporary is made).

    Returns
    -------
    StepShape
    """
    w = np.broadcast_to(np.asarray(w, dtype=np.float64), np.shape(w))
    rows, cols = w.shape
    row_sums, col_sums = np.zeros(rows), np.zeros(cols)
    for part in row_runs(rows, cols):
        log_map = -0.5 * np.log2(np.maximum(w[part], np.finfo(np.float64).tiny))
        row_sums[part] = log_map.sum(axis=1)
        col_sums += log_map.sum(axis=0)
    mean = float(row_sums.sum() / w.size) if w.size else 0.0
    row = row_sums / cols - mean if cols else np.zeros(rows)
    col = col_sums / rows - mean if rows else np.zeros(cols)
    return StepShape(mean, _exponents(row), _exponents(col))


def _exponents(effect):
    return np.clip(np.round(8 * effect), -EXPONENT_LIMIT, EXPONENT_LIMIT).astype(np.int8)


def bisect_offset(size, budget, low=OFFSET_RANGE[0], high=OFFSET_RANGE[1], tolerance=0.002,
                  iterations=60):
    """The smallest offset ``t`` whose ``size(t) <= budget`` (size falls as ``t`` grows).

    Parameters
    ----------
    size : callable float -> float
        Bytes of the model at offset ``t`` (non-increasing in ``t``, up to coding noise).
    budget : float
        Bytes allowed.
    tolerance : float
        Stop once ``size(t)`` is within this fraction below ``budget``.

    Returns
    -------
    offset : float
    bytes : float
        ``size(offset)``, at most ``budget`` unless even ``high`` exceeds it.
    """
    best = (high, size(high))
    if best[1] > budget:
        return best
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        found = size(middle)
        if found <= budget:
            high, best = middle, (middle, found)
            if found >= budget * (1 - tolerance):
                break
        else:
            low = middle
        if high - low < 1e-4:
            break
    return best


def offset_text(offset):
    """``t`` as text for notes: the log2 step offset and the λ it stands for."""
    lam = math.log(2) / 6 * 4.0 ** offset
    return f"t = {offset:.4f} (λ = {lam:.3e})"


def row_sample(shape, rng):
    """The rows a matrix's bytes are estimated on during the offset search.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)``.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of int of shape (max(1, SAMPLE_CODES // cols),), or None
        One row drawn from each of that many equal strata (so every gate block is sampled
        alike), sorted; None when the matrix has at most :data:`SAMPLE_CODES` entries or
        would be sampled whole.
    """
    rows, cols = shape
    count = max(1, SAMPLE_CODES // max(cols, 1))
    if rows * cols <= SAMPLE_CODES or count >= rows:
        return None
    edges = np.arange(count + 1) * rows // count
    return edges[:-1] + rng.integers(0, np.diff(edges))


@dataclass
class Matrix:
    """One matrix to code: where it sits, what it holds, what GPTQ and the search need.

    Attributes
    ----------
    key : tuple
        ``(layer name, direction index, role, factor)`` (factor ``"U"``, ``"V"`` or None).
    values : ndarray of float32 or float64, shape (rows, cols)
        The weights as stored (a Dense matrix's own array, not a copy).
    mask : ndarray of bool, shape (rows, cols), optional
        Kept entries of a pruned matrix.
    H : ndarray of shape (cols, cols), optional
        GPTQ's ``E[x xᵀ]``, until its inverse Cholesky factor is first needed.
    h_diag : ndarray of shape (cols,), optional
        ``diag H`` (the ``hessian`` sensitivity).
    sample : ndarray of int, optional
        :func:`row_sample`'s rows (None: estimate the whole matrix).
    """

    key: tuple
    values: np.ndarray
    mask: np.ndarray = None
    H: np.ndarray = None
    h_diag: np.ndarray = None
    sample: np.ndarray = None
    _cholesky: np.ndarray = None

    @property
    def count(self):
        """Codes stored: every entry, or the mask's kept ones."""
        return self.values.size if self.mask is None else int(np.count_nonzero(self.mask))

    def codes(self, shape, offset, gptq, rows=None):
        """Integer codes on the step map of ``shape`` at ``offset``, a run of rows at a time.

        Parameters
        ----------
        shape : StepShape
        offset : float
        gptq : bool
            GPTQ's codes (float32 arithmetic from :data:`FLOAT32_ENTRIES` entries on), else the
            rounded weights; both clamped to ``±CODE_LIMIT``, zero outside ``mask``.
        rows : ndarray of int, optional
            Only these rows (all by default).

        Returns
        -------
        ndarray of int8, int16 or int32 (the narrowest that holds them), shape (rows, cols)
        """
        values, mask = self.values, self.mask
        row_exp = shape.row_exp
        if rows is not None:
            values, row_exp = values[rows], row_exp[rows]
            mask = None if mask is None else mask[rows]
        delta, U = shape.delta(offset), self._factor() if gptq else None
        codes = np.empty(values.shape, np.int32)
        for part in row_runs(*values.shape, GPTQ_RUN if U is not None else None):
            steps = step_map(delta, row_exp[part], shape.col_exp)
            kept = None if mask is None else mask[part]
            if U is not None:
                codes[part] = gptq_round(values[part], None, steps, CODE_LIMIT, kept, U=U,
                                         dtype=U.dtype)
            else:
                found = np.clip(np.round(values[part] / steps), -CODE_LIMIT, CODE_LIMIT)
                codes[part] = found if kept is None else np.where(kept, found, 0)
        return narrowest(codes)

    def release(self):
        """Drop ``H`` and GPTQ's factor (once every candidate is coded: memory for scoring)."""
        self.H = self._cholesky = None

    def _factor(self):
        """GPTQ's inverse Cholesky factor of ``H`` in the arithmetic GPTQ will use (float32 from
        :data:`FLOAT32_ENTRIES` entries on), computed once (``H`` is then dropped); None when
        ``H`` is diagonal (one-hot inputs), where GPTQ is rounding."""
        if self.H is not None:
            if np.count_nonzero(self.H) > np.count_nonzero(np.diag(self.H)):  # not diagonal
                dtype = np.float32 if self.values.size >= FLOAT32_ENTRIES else np.float64
                self._cholesky = inverse_cholesky(self.H).astype(dtype, copy=False)
            self.H = None
        return self._cholesky


class Allocation:
    """One set of step maps over every coded matrix: codes, their estimated bytes (of the whole
    model or of the row subsamples) and their coded form at an offset.

    Parameters
    ----------
    matrices : list of Matrix
    shapes : list of StepShape
        One per matrix.
    fixed : int
        Bytes of the coded layers besides the matrices (their biases).
    gptq : bool
        GPTQ's codes, else rounded ones.
    """

    def __init__(self, matrices, shapes, fixed, gptq):
        self.matrices, self.shapes, self.fixed, self.gptq = matrices, shapes, fixed, gptq
        self.side = fixed + sum(EntropyCoded.side_bytes(s.row_exp, s.col_exp, m.mask)
                                for m, s in zip(matrices, shapes))

    def codes(self, offset):
        """Every matrix's codes at ``offset`` (list of ndarray)."""
        return [m.codes(s, offset, self.gptq) for m, s in zip(self.matrices, self.shapes)]

    def estimated(self, codes):
        """Bytes of the coded layers as :func:`rnnshrink.coding.estimate_bits` predicts them."""
        return self.side + sum(coding.estimate_bits(c, m.mask) / 8
                               for m, c in zip(self.matrices, codes))

    def sampled(self, offset, gptq):
        """:meth:`estimated` of the codes at ``offset`` (GPTQ's or rounded) on the row
        subsamples, each scaled up to its matrix: the same as on the whole model for matrices
        of at most :data:`SAMPLE_CODES` entries."""
        total = self.side
        for m, s in zip(self.matrices, self.shapes):
            rows = m.sample
            mask = m.mask if rows is None or m.mask is None else m.mask[rows]
            scale = 1.0 if rows is None else m.values.shape[0] / rows.size
            total += scale * coding.estimate_bits(m.codes(s, offset, gptq, rows), mask) / 8
        return total

    def coded(self, offset, codes=None):
        """Every matrix as :class:`~rnnshrink.model.coded.EntropyCoded` at ``offset`` (from
        ``codes`` when already computed there)."""
        codes = self.codes(offset) if codes is None else codes
        return [EntropyCoded(c, s.delta(offset), s.row_exp, s.col_exp, m.mask)
                for m, s, c in zip(self.matrices, self.shapes, codes)]

    def correction(self, offset, size, target):
        """How far to move ``offset`` for ``size`` bytes to become ``target``: by the slope of
        the log of the sampled size there (about one bit per code per octave, less at low
        rates), or one bit per code per octave where that slope is flat."""
        low = self.sampled(offset - SLOPE_SPAN, self.gptq)
        high = self.sampled(offset + SLOPE_SPAN, self.gptq)
        slope = math.log(low / high) / (2 * SLOPE_SPAN)
        if not slope > 0:
            slope = sum(m.count for m in self.matrices) / 8 / size
        return math.log(size / target) / slope
