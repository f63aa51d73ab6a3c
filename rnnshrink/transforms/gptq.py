"""Error-compensating (GPTQ) rounding of a matrix onto a fixed quantization grid.

For a matrix ``W`` (rows, cols) reading inputs ``x`` (cols,), GPTQ picks codes that make
``‖(W - Ŵ) X‖²`` small over calibration inputs ``X``: with ``H = E[x xᵀ]`` (dampened by
``damp · mean(diag H)``) and ``U`` the upper Cholesky factor of ``H⁻¹``, the columns are
rounded one by one, and the rounding error of column ``j``, divided by ``U[j, j]``, is
subtracted from the columns not rounded yet in proportion to ``U[j, j+1:]`` (Algorithm 1 of
the paper: blocks of 128 columns, the updates beyond the block applied once per block).
The grid is the caller's: the steps are fixed before any column is rounded (computed from the
original weights, as the round-to-nearest path does), and the codes are clamped to
``[-(2^(b-1) - 1), 2^(b-1) - 1]``, so only the codes differ from plain rounding. With
``H`` diagonal (one-hot inputs, or ``H = I``) no error is propagated and the codes are
exactly the rounded ones.

A pruned matrix keeps its zeros: entries outside ``mask`` get code 0 (their value at that
point, error updates included, counts as rounding error and is compensated on the kept
entries of the later columns; ``H⁻¹`` is the full one, as in SparseGPT).

Which inputs each LSTM matrix reads (:func:`lstm_samples`): ``W`` the layer's input
sequence ``x_t``; ``R`` the direction's own previous output ``h_{t-1}`` (``h_{-1} = 0``; a
reverse direction's previous step is ``t + 1``); ``proj`` ``m_t = o_t ⊙ tanh(c_t)``, obtained
by running the reference forward pass on the same layer with ``R · proj`` as recurrent
weights and no projection (the same recurrence, whose output is ``m``).

References
----------
Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023 (arXiv 2210.17323), Algorithm 1 and §4 (Cholesky
reformulation, lazy batch updates, dampening); Frantar & Alistarh, "SparseGPT" (2023) for the
mask; rnnshrink ``methods.md`` §8 (GPTQ rounding with ``H = E[x xᵀ]`` from probes).
"""

import dataclasses

import numpy as np
import scipy.linalg

from ..model.forward import run_layer
from ..model.weights import Dense

# At most this many (sequence, time) samples per matrix for H.
MAX_SAMPLES = 20_000
BLOCK = 128


def hessian(samples):
    """``H = E[x xᵀ]`` over the rows of ``samples``.

    Parameters
    ----------
    samples : ndarray of shape (n, cols)

    Returns
    -------
    ndarray of float64, shape (cols, cols)
    """
    samples = np.asarray(samples, dtype=np.float64)
    return samples.T @ samples / max(len(samples), 1)


def inverse_cholesky(H, damp=0.01):
    """The upper Cholesky factor ``U`` of ``(H + damp · mean(diag H) · I)⁻¹`` (``H⁻¹ = Uᵀ U``).

    Inputs never active (``H[j, j] = 0``) get ``H[j, j] = 1``: their column is rounded
    without passing error on. If ``H`` is still not positive definite, the dampening is
    multiplied by 10 until it is.

    Parameters
    ----------
    H : ndarray of shape (cols, cols)
    damp : float

    Returns
    -------
    ndarray of float64, shape (cols, cols), upper triangular
    """
    H = np.array(H, dtype=np.float64)
    diagonal = np.diag_indices_from(H)
    dead = np.flatnonzero(np.diag(H) <= 0)
    H[dead, dead] = 1.0
    scale = np.mean(np.diag(H))
    for attempt in range(8):
        try:
            damped = H.copy()
            damped[diagonal] += damp * 10.0 ** attempt * scale
            inverse = scipy.linalg.cho_solve(scipy.linalg.cho_factor(damped), np.eye(len(H)))
            return scipy.linalg.cholesky(inverse, lower=False)
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("H stays singular after dampening")


def step_matrix(steps, cols, group=None):
    """The step of every entry from per-tensor (1, 1), per-row (rows, 1) or per-group steps.

    Returns
    -------
    ndarray of float64, shape (rows, cols)
    """
    steps = np.asarray(steps, dtype=np.float64)
    if steps.shape[1] > 1:
        return np.repeat(steps, group, axis=1)[:, :cols]
    return np.repeat(steps, cols, axis=1)


def gptq_codes(W, H, steps, bits, group=None, mask=None, damp=0.01, block=BLOCK):
    """GPTQ's codes for ``W`` on the grid ``steps`` (Algorithm 1 of the paper).

    Parameters
    ----------
    W : ndarray of shape (rows, cols)
    H : ndarray of shape (cols, cols)
        ``E[x xᵀ]`` of the inputs ``W`` reads.
    steps : ndarray of shape (1, 1), (rows, 1) or (rows, ceil(cols / group))
        The fixed grid (as :class:`~rnnshrink.model.weights.Quantized` stores it).
    bits : int in [2, 8]
    group : int, optional
        Columns per step when ``steps`` has one column per group.
    mask : ndarray of bool, shape (rows, cols), optional
        Kept entries of a pruned matrix; the others get code 0.
    damp : float
        Dampening, a fraction of the mean diagonal of ``H``.
    block : int
        Columns per lazy batch update.

    Returns
    -------
    ndarray of int8, shape (rows, cols), values in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``
    """
    S = step_matrix(steps, W.shape[1], group)
    limit = 2 ** (bits - 1) - 1
    return gptq_round(W, H, S, limit, mask, damp, block).astype(np.int8)


def gptq_round(W, H, S, limit=None, mask=None, damp=0.01, block=BLOCK, U=None):
    """GPTQ's integer codes for ``W`` on a step per entry ``S`` (any grid, e.g. an entropy
    coder's step map), clamped to ``[-limit, limit]`` when ``limit`` is given.

    Parameters
    ----------
    W, S : ndarray of shape (rows, cols)
    H : ndarray of shape (cols, cols)
    limit : int, optional
    mask : ndarray of bool, shape (rows, cols), optional
    damp : float
    block : int
    U : ndarray of shape (cols, cols), optional
        ``inverse_cholesky(H, damp)`` when already computed (``H`` is then not used).

    Returns
    -------
    ndarray of int64, shape (rows, cols)
    """
    W = np.array(W, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    rows, cols = W.shape
    U = inverse_cholesky(H, damp) if U is None else U
    codes = np.zeros((rows, cols), np.int64)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        Wb = W[:, start:end].copy()
        errors = np.zeros_like(Wb)
        for j in range(end - start):
            column = start + j
            q = np.round(Wb[:, j] / S[:, column])
            if limit is not None:
                q = np.clip(q, -limit, limit)
            if mask is not None:
                q = np.where(mask[:, column], q, 0.0)
            codes[:, column] = q
            errors[:, j] = (Wb[:, j] - q * S[:, column]) / U[column, column]
            Wb[:, j:] -= np.outer(errors[:, j], U[column, column:end])
        W[:, end:] -= errors @ U[start:end, end:]
    return codes


def sample_index(batch, steps, seed=0, limit=MAX_SAMPLES):
    """At most ``limit`` (sequence, time) pairs, seeded, without repetition.

    Returns
    -------
    tuple of ndarray of int, each of shape (n,)
    """
    total = batch * steps
    flat = np.arange(total)
    if total > limit:
        flat = np.sort(np.random.default_rng(seed).choice(total, limit, replace=False))
    return np.divmod(flat, steps)


def lstm_samples(layer, inputs, y, index):
    """The inputs every matrix of ``layer`` reads, at the sampled (sequence, time) pairs.

    Parameters
    ----------
    layer : LSTMLayer
    inputs : ndarray of shape (batch, time, input)
        The input sequence the layer ran on.
    y : ndarray of shape (batch, time, directions * out)
        Its output sequence.
    index : tuple of ndarray
        From :func:`sample_index`.

    Returns
    -------
    list of dict of str to ndarray
        Per direction, per role (``W``, ``R``, ``proj``), samples of shape (n, cols).
    """
    rows, times = index
    out = layer.out_size
    m = _cell_outputs(layer, inputs) if layer.proj_size else None
    found = []
    for k in range(len(layer.directions)):
        reverse = k == 1 or layer.reverse_only
        h = y[..., k * out:(k + 1) * out]
        previous = times + 1 if reverse else times - 1
        inside = (previous >= 0) & (previous < h.shape[1])
        h_prev = np.where(inside[:, None], h[rows, np.clip(previous, 0, h.shape[1] - 1)], 0.0)
        samples = {"W": inputs[rows, times], "R": h_prev}
        if m is not None:
            hidden = layer.hidden_size
            samples["proj"] = m[rows, times, k * hidden:(k + 1) * hidden]
        found.append(samples)
    return found


def _cell_outputs(layer, inputs):
    """``m_t = o_t ⊙ tanh(c_t)`` of a projection layer, (batch, time, directions * hidden)."""
    directions = [
        dataclasses.replace(d, R=Dense(d.R.materialize() @ d.proj.materialize()), proj=None)
        for d in layer.directions
    ]
    return run_layer(dataclasses.replace(layer, directions=directions), inputs)[0]
