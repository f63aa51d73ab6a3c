"""Shared low-rank factors of the LSTM gate matrices (Lu, Sindhwani & Sainath 2016).

The four gates' matrices of one kind are stacked (canonical order i, f, g, o) and factored
together, so one right factor ``V`` is shared by all four gates::

    W = [W_i; W_f; W_g; W_o]  (4H, D)   ≈  U V,   U = U_r S_r (4H, r),  V = V_rᵀ (r, D)
    R = [R_i; R_f; R_g; R_o]  (4H, H)   ≈  U' V', likewise

with ``U_r S_r V_rᵀ`` the rank-r truncated SVD (the best rank-r approximation in Frobenius
norm), so ``z = U (V x) + U' (V' h) + b``. The rank per matrix comes from ``rank``,
``rank_ratio · min(rows, cols)`` or CLSTM's energy rule with ``tau``
(:func:`rnnshrink.transforms.svd.projection_rank`). A matrix is kept dense when the factors
would not save parameters (``r · (rows + cols) >= rows · cols``).

``data=true`` factors each matrix to minimise the error of what it computes on calibration
data, ``E‖(M − U V) v‖²`` with ``C = E[v vᵀ]`` of its real inputs (``x`` for ``W``, the
layer's output ``h_{t−1}`` for ``R``, traced on the model as compressed so far; floored,
:mod:`.whitening`): ``M C^{1/2} = U S Vᵀ``, ``U = U_r S_r``, ``V = V_rᵀ C^{-1/2}``; ``tau``
then refers to the energy of ``M C^{1/2}``. With ``C = I`` this is the plain factorization.

``share_next=true`` shares ``V`` between the recurrent matrix of layer l and the input
matrices of the LSTM layers reading h^l: the stacked SVD ``[R_l; W_{l+1}] = U S Vᵀ`` whose
shared factor ``S_r V_rᵀ`` is a projection of h^l — exactly the joint SVD projection of
:func:`rnnshrink.transforms.svd.project_layer`, which is called for it. A layer's input
matrix set that way is not factored again; a layer with no LSTM consumer gets a plain factored
``R``.

The factors are :class:`~rnnshrink.model.weights.Dense` weights inside a
:class:`~rnnshrink.model.weights.LowRank`, so ``quant`` can quantize them later.

References
----------
Lu, Sindhwani & Sainath, "Learning compact recurrent neural networks", ICASSP 2016
(arXiv 1604.02594): W ≈ U V, U ∈ R^{n×r}, V ∈ R^{r×m}, sharing across gates and across
recurrent and inter-layer matrices; rnnshrink ``methods.md`` §2.
"""

import dataclasses

from ..errors import OptionError
from ..model import LSTMLayer
from ..model.weights import LowRank
from ._consumers import check_rank_choice, dense_like, readers, require_dense
from .base import Context, Param, Transform
from .svd import common_rank_svd, project_layer
from .whitening import calibration, layer_moments, sqrt_pair, whiten


def saves_params(shape, rank):
    """Whether ``rank · (rows + cols) < rows · cols``: the factors are smaller than the matrix."""
    rows, cols = shape
    return rank * (rows + cols) < rows * cols


def factor_directions(matrices, rank=None, rank_ratio=None, tau=None, moments=None):
    """Shared-gate factors of one matrix role of a layer's directions, at one rank.

    Parameters
    ----------
    matrices : list of Dense of shape (4H, cols)
        The same role (``W`` or ``R``) in each direction.
    rank, rank_ratio, tau : exactly one given; see
        :func:`rnnshrink.transforms.svd.common_rank_svd`
    moments : list of ndarray of shape (cols, cols), optional
        Per direction, ``C = E[v vᵀ]`` of the vectors the matrix reads on calibration data:
        the factors then minimise ``E‖(M − U V) v‖²`` (SVD of ``M C^{1/2}``).

    Returns
    -------
    r : int
    factored : list of LowRank
        ``LowRank(Dense(U_r S_r), Dense(V_rᵀ))`` of shapes (4H, r) and (r, cols), stored like
        the input matrix (data-aware: ``V = V_rᵀ C^{-1/2}``).
    """
    pairs = [(None, None)] * len(matrices) if moments is None else [sqrt_pair(C) for C in moments]
    r, factors, _ = common_rank_svd(
        [whiten(m.materialize(), root) for m, (root, _) in zip(matrices, pairs)],
        rank, rank_ratio, tau)
    factored = [LowRank(dense_like(U * s, m), dense_like(whiten(Vt, inverse), m))
                for m, (U, s, Vt), (_, inverse) in zip(matrices, factors, pairs)]
    return r, factored


class SharedLowRank(Transform):
    """Factor each LSTM layer's stacked gate matrices as ``U V`` with a shared ``V``.

    See the module docstring for the equations.
    """

    name = "lowrank"
    PARAMS = {
        "rank": Param(int, None, 1, None, help="rank of every factored matrix"),
        "rank_ratio": Param(float, None, 0.0, 1.0,
                            help="rank as a fraction of each matrix's smaller side"),
        "tau": Param(float, None, 0.0, 1.0, help="fraction of singular-value energy kept"),
        "matrices": Param(str, "both", choices=("both", "input", "recurrent"),
                          help="which matrices to factor"),
        "share_next": Param(bool, False,
                            help="share V between R of layer l and W of layer l+1 (a projection)"),
        "data": Param(bool, False, help="minimise the error of W x and R h on calibration "
                                        "data (whitened factors)"),
        "layers": Param(str, None, help="comma-separated LSTM layer names (default: all)"),
    }

    def check(self):
        check_rank_choice(self.name, self.params)
        if self.share_next and self.matrices == "input":
            raise OptionError(f"{self.name}: share_next factors the recurrent matrix; it needs "
                              f"matrices=both or recurrent, got {self.matrices}")

    def apply(self, model, context=None):
        names = [layer.name for layer in self.selected_layers(model)]
        require_dense(model, names, self.name)
        ranks = dict(rank=self.rank, rank_ratio=self.rank_ratio, tau=self.tau)
        context = context or Context()
        x = calibration(context, self.name) if self.data else None
        progress = context.step("shared low-rank factors", len(names))
        shared_inputs = set()
        for name in names:
            moments = layer_moments(model, x, name) if self.data else None
            roles = {"both": ("W", "R"), "input": ("W",), "recurrent": ("R",)}[self.matrices]
            if name in shared_inputs:
                roles = tuple(role for role in roles if role != "W")
            found, _ = readers(model, model.layer(name))
            if self.share_next and found and all(isinstance(c, LSTMLayer) for c in found):
                before = model.layer(name)
                model = project_layer(model, name, joint=True, **ranks,
                                      moments=moments and moments[1])
                if model.layer(name) is not before:
                    shared_inputs.update(c.name for c in found)
                roles = tuple(role for role in roles if role != "R")
            model = self._factor_layer(model, name, roles, ranks, moments)
            progress.update()
        progress.close()
        return model

    def _factor_layer(self, model, name, roles, ranks, moments):
        """``model`` with the ``roles`` matrices of layer ``name`` factored, plus one note.

        ``moments``: ``(E[x xᵀ], [E[h hᵀ] per direction])`` of the layer (data-aware), or None.
        """
        layer = model.layer(name)
        directions, parts = list(layer.directions), []
        for role in roles:
            matrices = [getattr(d, role) for d in directions]
            reads = None if moments is None else (
                [moments[0]] * len(matrices) if role == "W" else moments[1])
            r, factored = factor_directions(matrices, **ranks, moments=reads)
            if not saves_params(matrices[0].shape, r):
                parts.append(f"{role} {matrices[0].shape[0]}x{matrices[0].shape[1]} kept dense "
                             f"(rank {r} would not save parameters)")
                continue
            directions = [dataclasses.replace(d, **{role: f}) for d, f in zip(directions, factored)]
            parts.append(f"{role} rank {r}" + ("" if reads is None else " (whitened by data)"))
        if not parts:
            return model
        ranks_used = {role: weight.rank for role, weight in directions[0].matrices.items()
                      if role in roles and isinstance(weight, LowRank)}
        new_layer = dataclasses.replace(
            layer, directions=directions, source={**layer.source, "lowrank_rank": ranks_used})
        note = (f"lowrank {name}: {', '.join(parts)}; "
                f"LSTM bytes {layer.nbytes} -> {new_layer.nbytes}")
        model = model.replace_layer(name, new_layer)
        return model.replace(notes=model.notes + [note])
