"""Magnitude pruning: zero the weights of smallest magnitude, store the rest sparsely.

The ``prune`` transform zeroes, per matrix or over all LSTM matrices of the selected layers at
once, the entries of smallest ``|w|`` until the target sparsity is met exactly, and stores each
pruned matrix as a :class:`~rnnshrink.model.weights.Sparse` (values plus an index). A low-rank
matrix has its two factors pruned, a gated one (a Slim LSTM's) its full gate blocks. Biases are
never pruned.

The index is counted honestly by the weight object: below roughly 50 % sparsity a sparse
matrix is larger than the dense one; such a matrix is kept dense, with its zeros, and a note
says so (stored bytes never grow).

References
----------
rnnshrink ``methods.md`` §4 (magnitude pruning, index overhead); Han, Pool, Tran & Dally,
"Learning both weights and connections for efficient neural networks", NeurIPS 2015;
Han, Mao & Dally, "Deep Compression", ICLR 2016 (pruning stored as CSR).
"""

import dataclasses

import numpy as np

from ..errors import OptionError
from ..model.gated import GATES, Gated
from ..model.weights import Dense, LowRank, Sparse
from .base import Context, Param, Transform


def pruned_count(size, sparsity):
    """How many of ``size`` entries a target ``sparsity`` zeroes: the nearest integer."""
    return int(round(sparsity * size))


def magnitude_masks(matrices, sparsity):
    """Keep-masks pruning ``matrices`` together to ``sparsity`` by magnitude.

    Exactly ``pruned_count(total, sparsity)`` entries are dropped over all matrices, those of
    smallest ``|w|``; ties are broken by position (matrix order, then row-major), so the
    result is deterministic. Pass one matrix for per-matrix pruning.

    Parameters
    ----------
    matrices : list of ndarray, each of shape (rows_k, cols_k)
    sparsity : float in [0, 1)

    Returns
    -------
    list of ndarray of bool, shapes as ``matrices``
        True where the entry is kept.
    """
    flat = np.concatenate([np.abs(m).ravel() for m in matrices])
    dropped = np.argsort(flat, kind="stable")[:pruned_count(flat.size, sparsity)]
    keep = np.ones(flat.size, dtype=bool)
    keep[dropped] = False
    ends = np.cumsum([m.size for m in matrices])[:-1]
    return [part.reshape(m.shape) for part, m in zip(np.split(keep, ends), matrices)]


def prune_dense(weight, mask):
    """``weight`` with the entries outside ``mask`` zeroed, in the cheaper storage.

    Parameters
    ----------
    weight : Dense of shape (rows, cols)
    mask : ndarray of bool, shape (rows, cols)

    Returns
    -------
    Weight
        A :class:`Sparse` at the weight's stored dtype when it is smaller than the dense
        matrix, else a :class:`Dense` holding the zeros.
    """
    sparse = Sparse.from_dense(weight.values, mask, weight.stored_dtype)
    if sparse.nbytes < weight.nbytes:
        return sparse
    return Dense(np.where(mask, weight.values, 0).astype(weight.values.dtype), weight.stored_dtype)


def _factors(weight, where):
    """``(label, Dense)`` for the matrices pruning acts on: the matrix, both low-rank factors,
    or the full blocks of a gated matrix."""
    if isinstance(weight, LowRank):
        parts = [(".U", weight.U), (".V", weight.V)]
    elif isinstance(weight, Gated):
        parts = [(f".{gate}", b) for gate, b, s in zip(GATES, weight.blocks, weight.structure)
                 if s == "full"]
    else:
        parts = [("", weight)]
    for _, part in parts:
        if not isinstance(part, Dense):
            raise OptionError(
                f"prune: {where} is stored as {part.kind}; prune takes dense or low-rank "
                "matrices (prune must come before quant)"
            )
    return parts


def _rebuild(weight, pruned):
    if isinstance(weight, Gated):
        pruned = iter(pruned)
        blocks = [next(pruned) if s == "full" else b
                  for b, s in zip(weight.blocks, weight.structure)]
        return Gated(blocks, weight.shape, weight.diag_dtype)
    return LowRank(*pruned) if isinstance(weight, LowRank) else pruned[0]


class MagnitudePrune(Transform):
    """Zero the smallest-magnitude LSTM weights to a target sparsity; store them sparsely.

    Parameters
    ----------
    sparsity : float in [0, 1)
        Fraction of the entries to zero.
    scope : {"matrix", "global"}
        ``matrix``: every matrix (every low-rank factor) reaches ``sparsity``; ``global``: one
        magnitude threshold over all LSTM matrices of the selected layers.
    layers : str, optional
        Comma-separated LSTM layer names; all LSTM layers by default.

    References
    ----------
    rnnshrink ``methods.md`` §4.
    """

    name = "prune"
    PARAMS = {
        "sparsity": Param(float, 0.5, 0.0, 1.0, help="fraction of LSTM weights set to zero"),
        "scope": Param(str, "matrix", choices=("matrix", "global"),
                       help="reach the sparsity in every matrix, or over all of them together"),
        "layers": Param(str, None, help="comma-separated LSTM layer names (default: all)"),
    }

    def check(self):
        if self.sparsity >= 1.0:
            raise OptionError(f"prune: sparsity must be in [0, 1), got {self.sparsity}")

    def apply(self, model, context=None):
        context = context or Context()
        layers = self.selected_layers(model)
        # (layer, direction index, role) -> the weight and the dense matrices pruning acts on.
        slots = {}
        for layer in layers:
            for k, direction in enumerate(layer.directions):
                for role, weight in direction.matrices.items():
                    where = f"layer {layer.name} {role}[{k}]"
                    slots[layer.name, k, role] = (weight, _factors(weight, where))
        parts = [part.values for _, found in slots.values() for _, part in found]
        if self.scope == "global":
            masks = iter(magnitude_masks(parts, self.sparsity))
        else:
            masks = iter(mask for m in parts for mask in magnitude_masks([m], self.sparsity))

        progress = context.step("prune", len(layers))
        notes = list(model.notes)
        new_layers = {}
        for layer in layers:
            directions, kept_dense = [], []
            for k, direction in enumerate(layer.directions):
                changes = {}
                for role in direction.matrices:
                    weight, found = slots[layer.name, k, role]
                    pruned = [prune_dense(part, next(masks)) for _, part in found]
                    kept_dense += [f"{role}[{k}]{label}" for (label, _), p in zip(found, pruned)
                                   if isinstance(p, Dense)]
                    changes[role] = _rebuild(weight, pruned)
                directions.append(dataclasses.replace(direction, **changes))
            new_layers[layer.name] = dataclasses.replace(layer, directions=directions)
            if kept_dense and self.sparsity > 0:
                notes.append(
                    f"prune: layer {layer.name}: {', '.join(kept_dense)} kept dense with their "
                    "zeros: the sparse index would cost more than it saves at this sparsity"
                )
            progress.update()
        progress.close()
        return model.replace(
            layers=[new_layers.get(layer.name, layer) for layer in model.layers], notes=notes
        )
