"""SVD projection of LSTM layers: CLSTM, an LSTM with a low-rank recurrent projection.

For each selected layer and direction (canonical orientation, ``R`` of shape (4H, H) used as
``R @ h``), with ``m_t = o_t ⊙ tanh(c_t)`` the unprojected output::

    R = U S Vᵀ                        SVD, singular values s descending
    r = min{k ≥ 0 : Σ_{i<k} s_i² / Σ_i s_i² ≥ tau}       CLSTM get_projection_rank
    proj  = S_r V_rᵀ   (r, H)         the projection: h_t = proj @ m_t (r-wide)
    R_new = U_r        (4H, r)        z_t = W x_t + R_new h_{t-1} + b
    K_new = argmin_Z ‖Z proj − K‖_F    for every consumer K (out, H) of the layer's output
                                      (least squares; the layer's own W and b are unchanged)

This is PyTorch's ``nn.LSTM(proj_size=r)`` (``weight_hr = proj``). In methods.md's Keras
layout (``R_k = Rᵀ = U' S V'ᵀ``, ``P = U'_r S_r``, ``Z_h = V'_rᵀ``): ``proj = Pᵀ`` and
``R_new = Z_hᵀ``. Parameters per direction: ``in·4H + H·r + r·4H + 4H·bias_terms``; a
consumer's matrix becomes (out, r). A bidirectional layer's output is ``[h_fwd, h_bwd]``: each
consumer's column half of one direction is refit on that direction's projection.

``joint=true`` (Prabhavalkar et al.): the recurrent matrix of layer l and the input matrices
of the LSTM layers that read its output share one projection::

    M = [R_l ; K_1 ; ...] = U S Vᵀ              (rows stacked, (4H + 4H' + ..., H))
    proj = S_r V_rᵀ,   [R_new ; K_1,new ; ...] = U_r          (rank from M's energy)

A layer read by a Dense layer (the last one) falls back to the least-squares refit.

``data=true`` minimises the error of what the readers compute on calibration data instead of
the weights' error: with ``C = E[h hᵀ]`` the second moment of the layer's output on the
calibration inputs (``h = m`` without a projection; floored, :mod:`.whitening`)::

    M C^{1/2} = U S Vᵀ            M = R, or the joint stack [R ; K_1 ; ...]
    proj  = S_r V_rᵀ C^{-1/2} (P0)   R_new = U_r   (tau: energy of M C^{1/2}, the pre-activations)
    K_new = argmin E‖K h − K_new proj h‖² = K C projᵀ (proj C projᵀ)⁻¹   (not joint)

The statistics are traced on the model as compressed so far. A layer with a projection ``P0``
is whitened in its output (``h``) space and the new projection composed with ``P0``. With
``C = I`` this is the plain variant.

Rules of this implementation (each applied one is written to ``model.notes``):

* the rank is at least 1 (CLSTM's rule gives 0 for ``tau = 0``); both directions of a layer use
  the larger of their two ranks (they must have the same shapes);
* a layer whose consumers are unknown (``model.consumers`` empty, a consumer rnnshrink cannot
  refit, or one with other inputs too) keeps its output width: its ``R`` is stored as
  ``LowRank(U_r, S_r V_rᵀ)`` — the same ``4H·r + r·H`` parameters, no projection;
* a layer that already has a projection ``P0`` (PyTorch ``proj_size``) is composed: the SVD
  works on ``R P0`` and each consumer ``K P0`` (the maps of ``m_t``), and the new projection
  replaces ``P0``;
* the result is kept only if no LSTM layer it changes grows and together they shrink (bytes
  counted by the weight objects); otherwise the layer is left unchanged. So ``tau = 1`` leaves
  a full-rank layer as it is: its projection would add ``H·H`` parameters.

References
----------
Prabhavalkar, Alsharif, Bruguier & McGraw, "On the compression of recurrent neural networks
with an application to LVCSR acoustic modeling for embedded speech recognition", ICASSP 2016
(arXiv 1603.08042); CLSTM Keras code ``src/compress_weights.py`` (``get_projection_rank``,
``get_projection_matrices``, ``compress_weights``); rnnshrink ``methods.md`` §1.
"""

import dataclasses

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import ArpackNoConvergence, svds

from ..model import LSTMLayer
from ..model.weights import LowRank
from ._consumers import (check_rank_choice, dense_like, reader_weights, readers,
                         rebuild_readers, require_dense)
from .base import Context, Param, Transform
from .whitening import calibration, layer_moments, refit_on_data, sqrt_pair, whiten

# ARPACK (scipy.sparse.linalg.svds) beats LAPACK gesdd only for a few triplets of a wide matrix:
# measured on 4096 x 1024, k = 32 takes half the time of the full SVD, k = 128 1.6 times it.
PARTIAL_MIN_WIDTH = 512
PARTIAL_MAX_FRACTION = 1 / 32
# the tau rule's Gram-matrix top triplets (truncated_svd) cost one n^3 reduction whatever k is:
# up to a quarter of the width (a trained LSTM's tau = 0.5 rank) they beat the full SVD
GRAM_MAX_FRACTION = 1 / 4


def projection_rank(singular_values, tau):
    """CLSTM's rank: the fewest top singular values that keep a fraction ``tau`` of the energy.

    Parameters
    ----------
    singular_values : ndarray of shape (n,)
        The whole spectrum, sorted descending.
    tau : float
        At most 1. ``tau <= 0`` gives 0, ``tau = 1`` the full rank.

    Returns
    -------
    int
        Smallest ``k >= 0`` with ``Σ_{i<k} s_i² / Σ_i s_i² >= tau``. A zero matrix gives 0, as
        in CLSTM (``0/0 < tau`` is false).

    Notes
    -----
    ``Σ_i s_i² = ‖M‖_F²``, so the rule can stop at the top values of a partial SVD:
    :func:`truncated_svd` does, where the rank is small enough for a partial SVD to be faster.
    """
    if tau > 1:
        raise ValueError(f"tau must be at most 1, got {tau}")
    energy = np.cumsum(np.square(np.asarray(singular_values, dtype=np.float64)))
    if tau <= 0 or not energy.size or energy[-1] <= 0:
        return 0
    return int(np.flatnonzero(energy / energy[-1] >= tau)[0]) + 1


def singular_triplets(M, k=None):
    """The ``k`` largest singular triplets of ``M`` (all of them when ``k`` is None).

    The one place rnnshrink computes an SVD: LAPACK ``gesdd`` (``gesvd`` if that does not
    converge), or ARPACK (``scipy.sparse.linalg.svds``) for a few triplets of a wide matrix
    (``min(m, n) >= PARTIAL_MIN_WIDTH``, ``k <= PARTIAL_MAX_FRACTION · min(m, n)``).

    Parameters
    ----------
    M : ndarray of shape (m, n)
    k : int, optional

    Returns
    -------
    U : ndarray of shape (m, k)
    s : ndarray of shape (k,)
        Descending.
    Vt : ndarray of shape (k, n)
    """
    M = np.asarray(M, dtype=np.float64)
    if k is not None and 0 < k <= _partial_limit(M):
        found = _partial_triplets(M, k)
        if found is not None:
            return found
    try:
        U, s, Vt = scipy.linalg.svd(M, full_matrices=False, lapack_driver="gesdd")
    except np.linalg.LinAlgError:
        U, s, Vt = scipy.linalg.svd(M, full_matrices=False, lapack_driver="gesvd")
    return (U, s, Vt) if k is None else (U[:, :k], s[:k], Vt[:k])


def truncated_svd(M, rank=None, tau=None):
    """The top singular triplets of ``M``: ``rank`` of them, or as many as ``tau`` needs.

    Parameters
    ----------
    M : ndarray of shape (m, n)
    rank : int, optional
    tau : float, optional
        Exactly one of ``rank`` and ``tau``.

    Returns
    -------
    U : ndarray of shape (m, r)
    s : ndarray of shape (r,)
    Vt : ndarray of shape (r, n)
        ``r`` may be 0 with ``tau`` (CLSTM's rule for ``tau <= 0`` or a zero matrix).

    Notes
    -----
    With ``tau`` the rule needs only the top singular values, since ``Σ_i s_i² = ‖M‖_F²``:
    for ``min(m, n) >= PARTIAL_MIN_WIDTH``, the top ``GRAM_MAX_FRACTION · min(m, n)``
    triplets come from the Gram matrix
    (:func:`_gram_triplets`); when they hold ``tau ‖M‖_F²`` the rank is read off them,
    otherwise the full SVD is used. Both give the same rank and factors (up to sign) within
    floating-point tolerance.
    """
    if (rank is None) == (tau is None):
        raise ValueError("give exactly one of rank and tau")
    if rank is not None:
        return singular_triplets(M, rank)
    M = np.asarray(M, dtype=np.float64)
    width = min(M.shape)
    limit = int(width * GRAM_MAX_FRACTION) if width >= PARTIAL_MIN_WIDTH else 0
    needed = tau * np.sum(np.square(M))
    if 0 < tau < 1 and needed > 0 and limit:
        U, s, Vt = _gram_triplets(M, limit)
        energy = np.cumsum(np.square(s))
        if energy[-1] >= needed:
            r = int(np.flatnonzero(energy >= needed)[0]) + 1
            return U[:, :r], s[:r], Vt[:r]
    U, s, Vt = singular_triplets(M)
    r = projection_rank(s, tau)
    return U[:, :r], s[:r], Vt[:r]


def _partial_limit(M):
    """The most triplets worth a partial SVD of ``M`` (0: none, ``M`` is too narrow)."""
    width = min(M.shape)
    return int(width * PARTIAL_MAX_FRACTION) if width >= PARTIAL_MIN_WIDTH else 0


def _gram_triplets(M, k):
    """The ``k`` top triplets of ``M`` from the Gram matrix of its narrow side.

    With ``M`` (m, n), ``n <= m``: ``MᵀM = V S² Vᵀ``, the top ``k`` eigenpairs by LAPACK
    ``syevr`` (``scipy.linalg.eigh(subset_by_index=...)``: one tridiagonal reduction, only
    ``k`` eigenvectors), ``s = sqrt(λ)``, ``U = M V / s``. One BLAS-3 product and an
    ``n³`` reduction instead of the full SVD's ``m n²`` rotations; the top triplets carry an
    error of order ``eps · s_1² / s_k²``, far below the rank rule's resolution.
    """
    if M.shape[0] < M.shape[1]:
        U, s, Vt = _gram_triplets(M.T, k)
        return Vt.T, s, U.T
    n = M.shape[1]
    values, V = scipy.linalg.eigh(M.T @ M, subset_by_index=[n - k, n - 1])
    values, V = values[::-1], V[:, ::-1]
    s = np.sqrt(np.maximum(values, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        U = np.where(s > 0, (M @ V) / s, 0)
    return U, s, V.T


def _partial_triplets(M, k):
    """The ``k`` top triplets of ``M`` by ARPACK, descending; None if it does not converge."""
    try:
        U, s, Vt = svds(M, k=k, solver="arpack", random_state=0)
    except ArpackNoConvergence:
        return None
    order = np.argsort(s)[::-1]
    return U[:, order], s[order], Vt[order]


def common_rank_svd(matrices, rank=None, rank_ratio=None, tau=None):
    """Truncated SVDs of several same-shape matrices (a layer's directions) at one rank.

    The rank is ``rank``, ``round(rank_ratio · min(m, n))`` or the largest of the matrices'
    :func:`projection_rank` for ``tau``, clamped to ``[1, min(m, n)]``.

    Parameters
    ----------
    matrices : list of ndarray of shape (m, n)
    rank, rank_ratio, tau : exactly one given

    Returns
    -------
    r : int
    factors : list of tuple (U (m, r), s (r,), Vt (r, n))
    rule : list of int
        The rank each matrix alone would get (before clamping and sharing).
    """
    width = min(matrices[0].shape)
    if tau is None:
        wanted = rank if rank is not None else round(rank_ratio * width)
        r = min(max(wanted, 1), width)
        return r, [truncated_svd(M, rank=r) for M in matrices], [wanted] * len(matrices)
    found = [truncated_svd(M, tau=tau) for M in matrices]
    rule = [s.size for _, s, _ in found]
    r = max(max(rule), 1)
    factors = [f if f[1].size == r else truncated_svd(M, rank=r) for f, M in zip(found, matrices)]
    return r, factors, rule


def split_projection(U, s, Vt, heights):
    """CLSTM's projection from the truncated SVD of a (stacked) matrix ``M ≈ U_r S_r V_rᵀ``.

    Parameters
    ----------
    U : ndarray of shape (rows, r)
    s : ndarray of shape (r,)
    Vt : ndarray of shape (r, H)
    heights : list of int
        Row counts of the matrices stacked in ``M`` (``[4H]`` for ``R`` alone, then the
        heights of the consumer matrices of a joint SVD); they sum to ``rows``.

    Returns
    -------
    proj : ndarray of shape (r, H)
        ``S_r V_rᵀ``, the projection ``h = proj @ m``.
    blocks : list of ndarray of shape (height, r)
        ``U_r`` cut into the stacked matrices' new versions: ``blocks[k] @ proj`` is the best
        rank-r approximation's rows of the k-th matrix.
    """
    return s[:, None] * Vt, np.split(U, np.cumsum(heights)[:-1])


def refit_reader(K, proj):
    """Least-squares refit of a consumer for a projected input (CLSTM ``np.linalg.lstsq``).

    Parameters
    ----------
    K : ndarray of shape (out, H)
        The consumer's matrix acting on the unprojected output.
    proj : ndarray of shape (r, H)

    Returns
    -------
    ndarray of shape (out, r)
        ``argmin_Z ‖Z proj − K‖_F``.
    """
    return np.linalg.lstsq(np.asarray(proj, np.float64).T, np.asarray(K, np.float64).T,
                           rcond=None)[0].T


def project_layer(model, name, rank=None, rank_ratio=None, tau=None, joint=False,
                  moments=None):
    """Apply the SVD projection to one LSTM layer of ``model`` and refit its consumers.

    Parameters
    ----------
    model : Model
    name : str
    rank, rank_ratio, tau : exactly one given; see :func:`common_rank_svd`
    joint : bool
        Share the projection with the input matrices of consuming LSTM layers.
    moments : list of ndarray of shape (out, out), optional
        Per direction, ``C = E[h hᵀ]`` of the layer's output on calibration data: the
        data-aware variant (SVD of ``M C^{1/2}``, consumers refit on data; module docstring).

    Returns
    -------
    Model
        A new model (``model`` is unchanged) with one note about this layer.
    """
    layer = model.layer(name)
    found, reason = readers(model, layer)
    if found is None:
        return _factor_in_place(model, layer, reason, rank, rank_ratio, tau, moments)
    joint_used = joint and all(isinstance(c, LSTMLayer) for c in found)
    reading = [(c, w) for c in found for w in reader_weights(c)]
    out = layer.out_size
    # plain: SVD of the maps of m (M P0); data-aware: of M C^{1/2}, M reading h
    pairs = _root_pairs(layer, moments)
    inputs, stacks = [], []
    for d, (direction, (root, _)) in enumerate(zip(layer.directions, pairs)):
        lift = _m_space(direction.proj if moments is None else None)
        blocks = [lift(w.materialize()[:, d * out:(d + 1) * out]) for _, w in reading]
        inputs.append(blocks)
        recurrent = lift(direction.R.materialize())
        stacks.append(whiten(np.vstack([recurrent] + blocks) if joint_used else recurrent, root))
    r, factors, rule = common_rank_svd(stacks, rank, rank_ratio, tau)
    directions, new_blocks = [], []
    for d, (direction, blocks, (U, s, Vt)) in enumerate(zip(layer.directions, inputs, factors)):
        heights = [direction.R.shape[0]] + ([b.shape[0] for b in blocks] if joint_used else [])
        proj, [R_new, *shared] = split_projection(U, s, Vt, heights)
        if moments is not None:  # proj = S_r V_rᵀ C^{-1/2} reads h = P0 m: composed with P0
            proj = whiten(proj, pairs[d][1])
            new_blocks.append(shared or [refit_on_data(b, proj, moments[d]) for b in blocks])
            proj = proj if direction.proj is None else proj @ direction.proj.materialize()
        else:
            new_blocks.append(shared or [refit_reader(b, proj) for b in blocks])
        directions.append(dataclasses.replace(
            direction, R=dense_like(R_new, direction.R), proj=dense_like(proj, direction.R)))
    new_layer = dataclasses.replace(layer, directions=directions,
                                    source={**layer.source, "svd_rank": r})
    new_readers = rebuild_readers(reading, [np.hstack(b) for b in zip(*new_blocks)])
    how = "joint SVD with " if joint_used else "least-squares refit of "
    detail = (f"rank {r} of {layer.hidden_size}{_rule_text(rule, r)}"
              f"{'' if moments is None else ' (whitened by calibration data)'}, "
              f"projection added, {how}{', '.join(c.name for c in found)}")
    if joint and not joint_used:
        detail += " (joint needs LSTM consumers)"
    return _commit(model, layer, new_layer, new_readers, detail)


def _factor_in_place(model, layer, reason, rank, rank_ratio, tau, moments=None):
    """Unknown consumer: ``R ≈ U_r (S_r V_rᵀ)`` stored as LowRank, output width unchanged
    (data-aware: ``R C^{1/2} ≈ U_r S_r V_rᵀ``, ``R ≈ U_r (S_r V_rᵀ C^{-1/2})``)."""
    pairs = _root_pairs(layer, moments)
    r, factors, rule = common_rank_svd(
        [whiten(d.R.materialize(), root) for d, (root, _) in zip(layer.directions, pairs)],
        rank, rank_ratio, tau)
    directions = []
    for direction, (U, s, Vt), (_, inverse) in zip(layer.directions, factors, pairs):
        proj, [R_new] = split_projection(U, s, Vt, [U.shape[0]])
        R = LowRank(dense_like(R_new, direction.R), dense_like(whiten(proj, inverse), direction.R))
        directions.append(dataclasses.replace(direction, R=R))
    new_layer = dataclasses.replace(layer, directions=directions,
                                    source={**layer.source, "svd_rank": r})
    detail = (f"{reason}, recurrent matrix factored at rank {r}{_rule_text(rule, r)}"
              f"{'' if moments is None else ' (whitened by calibration data)'} without projection")
    return _commit(model, layer, new_layer, {}, detail)


def _commit(model, layer, new_layer, new_readers, detail):
    """``model`` with the new layers if no LSTM layer grows and together they shrink; a note."""
    changed = {layer.name: new_layer, **new_readers}
    sizes = [(model.layer(name).nbytes, new.nbytes) for name, new in changed.items()
             if isinstance(new, LSTMLayer)]
    before, after = sum(old for old, _ in sizes), sum(new for _, new in sizes)
    if after >= before or any(new > old for old, new in sizes):
        steps = " + ".join(f"{old} -> {new}" for old, new in sizes)
        note = (f"svd {layer.name}: {detail} would not shrink the LSTM layers ({steps} bytes); "
                f"layer kept unchanged")
        return model.replace(notes=model.notes + [note])
    layers = [changed.get(other.name, other) for other in model.layers]
    note = f"svd {layer.name}: {detail}; LSTM bytes {before} -> {after}"
    return model.replace(layers=layers, notes=model.notes + [note])


def _m_space(proj):
    """The map taking a matrix that reads ``h = proj @ m`` to the one that reads ``m``."""
    if proj is None:
        return lambda matrix: matrix
    projection = proj.materialize()
    return lambda matrix: matrix @ projection


def _root_pairs(layer, moments):
    """Per direction ``(C^{1/2}, C^{-1/2})`` of ``moments``, or ``(None, None)`` (plain)."""
    if moments is None:
        return [(None, None)] * layer.num_directions
    return [sqrt_pair(C) for C in moments]


def _rule_text(rule, r):
    if all(k == r for k in rule):
        return ""
    return f" (rule gave {'/'.join(map(str, rule))}; clamped to [1, width], one rank per layer)"


class SVDProjection(Transform):
    """CLSTM SVD projection of LSTM layers, with least-squares or joint refit of consumers.

    See the module docstring for the equations.
    """

    name = "svd"
    PARAMS = {
        "tau": Param(float, None, 0.0, 1.0, help="fraction of singular-value energy kept"),
        "rank": Param(int, None, 1, None, help="projection rank"),
        "rank_ratio": Param(float, None, 0.0, 1.0, help="rank as a fraction of the hidden size"),
        "joint": Param(bool, False, help="share the projection with the next LSTM's input matrix"),
        "data": Param(bool, False, help="minimise the error of the readers' outputs on "
                                        "calibration data (whitened SVD)"),
        "layers": Param(str, None, help="comma-separated LSTM layer names (default: all)"),
    }

    def check(self):
        check_rank_choice(self.name, self.params)

    def apply(self, model, context=None):
        context = context or Context()
        names = [layer.name for layer in self.selected_layers(model)]
        require_dense(model, names, self.name)
        x = calibration(context, self.name) if self.data else None
        progress = context.step("svd projection", len(names))
        for name in names:
            # traced on the model as compressed so far: later layers see earlier errors
            moments = layer_moments(model, x, name)[1] if self.data else None
            model = project_layer(model, name, self.rank, self.rank_ratio, self.tau, self.joint,
                                  moments)
            progress.update()
        progress.close()
        return model
