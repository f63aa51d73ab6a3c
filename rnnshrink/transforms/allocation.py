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

from ..model.coded import row_runs, step_map

# Exponents are int8 eighths of an octave: 2^(±127/8) spans a factor of 6e4 either way.
EXPONENT_LIMIT = 127
# The offset t (log2 of the step) is searched in this range; weights are O(1e-3..1e1).
OFFSET_RANGE = (-40.0, 20.0)


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
