"""Error-compensating (GPTQ) rounding of a matrix onto a fixed quantization grid.

For a matrix ``W`` (rows, cols) reading inputs ``x`` (cols,), GPTQ picks codes that make
``‖(W - Ŵ) X‖²`` small over calibration inputs ``X``: with ``H = E[x xᵀ]`` (dampened by
``damp · mean(diag H)``) and ``U`` the upper Cholesky factor of ``H⁻¹``, the columns are
rounded one by one, and the rounding error of column ``j``, divided by ``U[j, j]``, is
subtracted from the columns not rounded yet in proportion to ``U[j, j+1:]`` (Algorithm 1 of
the paper: blocks of 128 columns, the updates beyond the block applied once per block; here
also sub-blocks of 16 within a block, and the work done on ``Wᵀ``, a run of rows at a time).
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
# Columns per inner lazy update within a block (see :func:`gptq_round`).
SUB_BLOCK = 16


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
    multiplied by 10 until it is. One Cholesky factorization and one triangular inverse: with
    ``H = R Rᵀ``, ``R`` upper (the lower factor of ``H`` with rows and columns reversed,
    reversed back), ``H⁻¹ = R⁻ᵀ R⁻¹``, so ``U = R⁻¹``.

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
            lower = scipy.linalg.cholesky(damped[::-1, ::-1], lower=True)
            U, info = scipy.linalg.lapack.dtrtri(np.ascontiguousarray(lower[::-1, ::-1]))
            if info == 0:
                return U
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


def gptq_round(W, H, S, limit=None, mask=None, damp=0.01, block=BLOCK, U=None,
               dtype=np.float64):
    """GPTQ's integer codes for ``W`` on a step per entry ``S`` (any grid, e.g. an entropy
    coder's step map), clamped to ``[-limit, limit]`` when ``limit`` is given.

    The rows are independent, so a caller may pass any run of rows (with their steps and mask)
    to bound memory. The work is done on ``Wᵀ`` (a column of ``W`` is then contiguous) with
    two levels of lazy updates: within a block of :data:`BLOCK` columns, sub-blocks of
    :data:`SUB_BLOCK` are updated column by column and passed on to the rest of the block by
    one product; the block is passed on to the later columns by one product (Algorithm 1's
    lazy batch update, applied twice). The arithmetic is that of the plain algorithm.

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
    dtype : {numpy.float64, numpy.float32}
        Arithmetic of the updates; float32 halves time and memory (codes then differ from
        float64's only where a value falls within rounding noise of a half step).

    Returns
    -------
    ndarray of int32, shape (rows, cols)
    """
    rows, cols = np.shape(W)
    U = (inverse_cholesky(H, damp) if U is None else U).astype(dtype, copy=False)
    Wt = np.array(np.transpose(W), dtype=dtype, order="C")  # (cols, rows): updated in place
    St = np.array(np.transpose(S), dtype=dtype, order="C")
    dropped = None if mask is None else ~np.transpose(mask)
    codes = np.empty((cols, rows), dtype)
    errors = np.empty((block, rows), dtype)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        for sub in range(start, end, SUB_BLOCK):
            sub_end = min(sub + SUB_BLOCK, end)
            for column in range(sub, sub_end):  # ufuncs in place: few calls on short rows
                q, error = codes[column], errors[column - start]
                np.rint(np.divide(Wt[column], St[column], out=q), out=q)
                if limit is not None:
                    np.clip(q, -limit, limit, out=q)
                if dropped is not None:
                    q[dropped[column]] = 0.0
                np.subtract(Wt[column], np.multiply(q, St[column], out=error), out=error)
                error /= U[column, column]
                Wt[column + 1:sub_end] -= U[column, column + 1:sub_end, None] * error
            Wt[sub_end:end] -= U[sub:sub_end, sub_end:end].T @ errors[sub - start:sub_end - start]
        Wt[end:] -= U[start:end, end:].T @ errors[:end - start]
    return np.ascontiguousarray(codes.T, dtype=np.int32)


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
