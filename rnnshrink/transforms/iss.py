"""Intrinsic Sparse Structures (ISS): remove whole hidden units so the LSTM stays regular.

ISS component ``k`` of an LSTM direction with hidden size ``H`` (canonical layout, ``W @ x``)
is the union of

(a) the recurrent weights leaving ``h_k``: column ``k`` of ``R`` (4H, H);
(b) the four gate rows ``k, H+k, 2H+k, 3H+k`` of ``W`` and ``R`` and of the bias;
(c) the columns of whatever consumes ``h``: column ``k`` (``d·H + k`` for direction ``d``) of
    the next LSTM's input weights or of the Dense layer's weights.

The four entries ``R[gH+k, k]`` lie in (a) and (b) and are counted once (a union, as
methods.md defines the group; the authors' TensorFlow code sums them twice). Without retraining,
the transform takes one group-lasso proximal step ``w_g ← w_g · max(0, 1 − λ/‖w_g‖)`` with
``‖w_g‖ = sqrt(Σ w² + 1e-8)`` (groups overlap in ``R`` and in a consumer LSTM's ``W``: a
weight in two groups is scaled by both factors, all computed from the same weights), then keeps
the units of largest norm (``keep``) and/or of norm above ``threshold``; units whose group the
step zeroed are removed too. The survivors form a smaller regular LSTM (H → H′) and the
consumer loses the matching columns. When the consumer is unknown the output width must stay:
a removed unit's gate rows, biases and recurrent column are zeroed instead, which makes its
``c`` and ``h`` exactly 0 from a zero initial state (``g = tanh(0) = 0`` so ``c = f·0 + i·0``,
``h = o·tanh(0) = 0``, whatever the gate activation; cell or hidden activations nonzero at 0 are
refused); this saves no bytes by itself. Layers are processed in data-flow order, so a layer
that is also a consumer has its input columns sliced before its own groups are measured.

``data=true`` (how many units survive is decided as above) chooses *which* by their effect on
calibration data: with ``C = E[m mᵀ]`` of the layer's real outputs (traced on the model as
compressed so far; floored, :mod:`.whitening`), units are removed greedily by the least
increase of ``E‖K m − K_new m_kept‖²`` over the matrices that read them (the consumers'
columns and the layer's own ``R``; :func:`data_units`), and those matrices (the consumers and
the kept rows of ``R``) are refit by least squares on the survivors' states,
``K_new = K C[:, kept] C[kept, kept]⁻¹``. With ``C = I`` the refit is the plain slicing. With
an unknown consumer (units zeroed in place, nothing can compensate) the units of largest
``E[m_k²]`` are kept.

References
----------
Wen et al., "Learning Intrinsic Sparse Structures within Long Short-Term Memory", ICLR 2018,
arXiv 1709.05027, and its code (``wenwei202/iss-rnns``, ``add_structure_grouplasso``: groups,
the 1e-8 inside the square root); rnnshrink ``methods.md`` §3.
"""

import dataclasses

import numpy as np

from ..errors import OptionError
from ..model import DenseLayer, LSTMLayer
from ._consumers import dense_like, readers, require_dense
from .base import Context, Param, Transform
from .whitening import calibration, floored, layer_moments, refit_on_data

EPS = 1e-8


def group_energy(W, R, b, consumers=()):
    """Sum of squares of each ISS group of one direction.

    Parameters
    ----------
    W : ndarray of shape (4 * H, D)
    R : ndarray of shape (4 * H, H)
    b : ndarray of shape (4 * H,)
    consumers : list of ndarray, each of shape (rows, H)
        The consumer columns that read this direction's ``h``.

    Returns
    -------
    ndarray of shape (H,)
    """
    hidden = R.shape[1]

    def per_unit(a):  # the four gate rows of each unit, summed
        return (a.reshape(4, hidden, -1) ** 2).sum(axis=(0, 2))

    shared = np.einsum("gkk->k", R.reshape(4, hidden, hidden) ** 2)
    total = per_unit(W) + per_unit(R) + per_unit(b) + (R**2).sum(axis=0) - shared
    for columns in consumers:
        total = total + (columns**2).sum(axis=0)
    return total


def group_norms(energy):
    """``sqrt(Σ w² + 1e-8)`` per group, as in the authors' code; ndarray of shape (H,)."""
    return np.sqrt(energy + EPS)


def proximal_factors(norms, lam):
    """The group-lasso proximal scale ``max(0, 1 − λ/‖w_g‖)`` of each group, shape (H,)."""
    return np.maximum(0.0, 1.0 - lam / norms)


def shrink_groups(W, R, b, consumers, factors):
    """Scale every group's weights by its factor (a weight in two groups by both).

    Parameters
    ----------
    W, R, b, consumers : as in :func:`group_energy`
    factors : ndarray of shape (H,)

    Returns
    -------
    W, R, b, consumers : new arrays of the same shapes
    """
    hidden = R.shape[1]
    rows = np.tile(factors, 4)
    scale = rows[:, None] * factors[None, :]
    # R[gH+k, k] belongs to group k alone: scale it once.
    for g in range(4):
        scale[g * hidden + np.arange(hidden), np.arange(hidden)] = rows[g * hidden:(g + 1) * hidden]
    return (
        (W * rows[:, None]).astype(W.dtype),
        (R * scale).astype(R.dtype),
        (b * rows).astype(b.dtype),
        [(c * factors[None, :]).astype(c.dtype) for c in consumers],
    )


def kept_count(energy, keep=None, threshold=None):
    """How many units survive: groups not zero, of norm above ``threshold``, at most
    ``max(1, round(keep · H))`` of them.

    Parameters
    ----------
    energy : ndarray of shape (H,)
        Sum of squares of each group (:func:`group_energy`).
    keep : float in (0, 1], optional
    threshold : float, optional

    Returns
    -------
    int
    """
    alive = energy > 0
    if threshold is not None:
        alive &= group_norms(energy) > threshold
    count = int(alive.sum())
    if keep is not None:
        count = min(count, max(1, int(round(keep * energy.size))))
    return count


def top_units(energy, count):
    """Indices of the ``count`` largest groups in increasing order (ties: lower index wins)."""
    return np.sort(np.argsort(-energy, kind="stable")[:count])


def data_units(readers, C, count):
    """The ``count`` units whose removal least changes what ``readers`` compute on data.

    Greedy optimal brain surgeon on ``E‖K m − K_new m_kept‖²``: removing unit ``q`` with the
    best least-squares compensation of the others costs ``‖K[:, q]‖² / [C⁻¹]_qq``; the
    cheapest is removed, ``K`` compensated (``K −= K[:, q] C⁻¹[q, :] / C⁻¹_qq``) and ``C⁻¹``
    downdated to the survivors, until ``count`` remain.

    Parameters
    ----------
    readers : ndarray of shape (rows, H)
        The stacked matrices that read the units (consumer columns, the layer's own ``R``).
    C : ndarray of shape (H, H)
        ``E[m mᵀ]`` of the units' outputs on calibration data (floored).
    count : int

    Returns
    -------
    ndarray of int
        The kept units in increasing order.
    """
    K = np.array(readers, dtype=np.float64)
    inverse = np.linalg.inv(floored(C))
    alive = np.ones(len(inverse), dtype=bool)
    for _ in range(len(inverse) - count):
        diagonal = np.diag(inverse)
        cost = np.where(alive, (K**2).sum(axis=0) / np.where(alive, diagonal, 1.0), np.inf)
        q = int(np.argmin(cost))
        K -= np.outer(K[:, q], inverse[q]) / inverse[q, q]
        inverse -= np.outer(inverse[:, q], inverse[q]) / inverse[q, q]
        alive[q] = False
    return np.flatnonzero(alive)


def gate_rows(units, hidden):
    """Row indices of units ``units`` in all four gate blocks of a (4H, ·) matrix."""
    return np.concatenate([g * hidden + np.asarray(units, dtype=int) for g in range(4)])


class ISS(Transform):
    """Remove whole LSTM hidden units by group norm (Intrinsic Sparse Structures).

    Parameters
    ----------
    lam : float >= 0
        Strength of the group-lasso proximal step; 0 skips it.
    keep : float in (0, 1]
        Fraction of the units kept, those of largest group norm.
    threshold : float >= 0
        Keep only units whose group norm exceeds it.
    layers : str, optional
        Comma-separated LSTM layer names; all LSTM layers by default.

    References
    ----------
    Wen et al., ICLR 2018; rnnshrink ``methods.md`` §3.
    """

    name = "iss"
    PARAMS = {
        "lam": Param(float, 0.0, 0.0, None, help="group-lasso proximal strength (0: off)"),
        "keep": Param(float, None, 0.0, 1.0, help="fraction of hidden units kept, by group norm"),
        "threshold": Param(float, None, 0.0, None, help="keep units whose group norm exceeds it"),
        "data": Param(bool, False, help="choose the units by their effect on the readers' "
                                        "outputs on calibration data, refit the readers on it"),
        "layers": Param(str, None, help="comma-separated LSTM layer names (default: all)"),
    }

    def check(self):
        if self.keep is not None and self.keep <= 0:
            raise OptionError(f"iss: keep must be in (0, 1], got {self.keep}")
        if self.lam == 0 and self.keep is None and self.threshold is None:
            raise OptionError("iss: give at least one of lam > 0, keep, threshold")

    def apply(self, model, context=None):
        context = context or Context()
        names = [layer.name for layer in self.selected_layers(model)]
        require_dense(model, names, self.name)
        for name in names:
            layer = model.layer(name)
            if layer.proj_size:
                raise OptionError(
                    f"iss: layer {name} has a projection (proj_size={layer.proj_size}); "
                    "ISS removes units of h, so iss must come before svd"
                )
        x = calibration(context, self.name) if self.data else None
        progress = context.step("iss", len(names))
        for name in names:
            # traced on the model as compressed so far: later layers see earlier errors
            moments = layer_moments(model, x, name)[1] if self.data else None
            model = self._apply_layer(model, model.layer(name), moments)
            progress.update()
        progress.close()
        return model

    def _apply_layer(self, model, layer, moments=None):
        """``model`` with ISS applied to ``layer`` (and its consumers); ``moments``: per
        direction ``E[m mᵀ]`` on calibration data (data-aware), or None."""
        consumers, why = readers(model, layer)
        reading = _reading(consumers)
        hidden = layer.hidden_size
        shrunk, energies = [], []
        for d, direction in enumerate(layer.directions):
            columns = [w.values[:, d * hidden:(d + 1) * hidden] for _, _, w in reading]
            arrays = (direction.W.values, direction.R.values, direction.b, columns)
            if self.lam > 0:
                factors = proximal_factors(group_norms(group_energy(*arrays)), self.lam)
                arrays = shrink_groups(*arrays, factors)
            shrunk.append(arrays)
            energies.append(group_energy(*arrays))
        counts = [kept_count(e, self.keep, self.threshold) for e in energies]
        if max(counts) == 0:
            raise OptionError(
                f"iss: layer {layer.name} would keep none of its {hidden} units "
                f"(lam={self.lam}, threshold={self.threshold}); lower them"
            )
        if consumers is None:
            # data-aware: nothing downstream can compensate, so keep the units of most E[m_k²]
            scores = energies if moments is None else [np.diag(C) for C in moments]
            return _zero_units(model, layer, shrunk, scores, counts, why)
        # The directions of a layer share one hidden size: keep the larger count in both.
        if moments is None:
            kept = [top_units(e, max(counts)) for e in energies]
        else:
            kept = [data_units(np.vstack(arrays[3] + [arrays[1]]), C, max(counts))
                    for arrays, C in zip(shrunk, moments)]
        return _remove_units(model, layer, reading, shrunk, kept, moments)


def _remove_units(model, layer, reading, shrunk, kept, moments=None):
    """Slice the kept units out of ``layer`` and the matching columns out of its consumers.

    With ``moments`` (per direction ``C = E[m mᵀ]``), the matrices reading the units (the
    consumers' columns, the kept rows of ``R``) are refit by least squares on the survivors'
    states, ``K_new = K C[:, kept] C[kept, kept]⁻¹``, instead of sliced.
    """
    hidden = layer.hidden_size
    moments = moments or [None] * len(kept)

    def survivors(K, units, C):  # what reads the kept units
        if C is None:
            return K[:, units]
        return refit_on_data(K, np.eye(hidden)[units], C).astype(K.dtype)

    directions = []
    for direction, (W, R, b, _), units, C in zip(layer.directions, shrunk, kept, moments):
        rows = gate_rows(units, hidden)
        directions.append(dataclasses.replace(
            direction, W=dense_like(W[rows], direction.W),
            R=dense_like(survivors(R[rows], units, C), direction.R), b=b[rows],
        ))
    earlier = layer.source.get("iss_kept") or [list(range(hidden))] * len(kept)
    source = {**layer.source,
              "iss_kept": [[earlier[d][k] for k in units] for d, units in enumerate(kept)]}
    replaced = {layer.name: dataclasses.replace(layer, directions=directions, source=source)}
    for j, (consumer, k, old) in enumerate(reading):
        # Direction d's units are columns d·H + k: the kept ones of each direction, in order.
        values = np.concatenate([survivors(arrays[3][j], units, C)
                                 for arrays, units, C in zip(shrunk, kept, moments)], axis=1)
        current = replaced.get(consumer.name, consumer)
        if isinstance(consumer, DenseLayer):
            replaced[consumer.name] = dataclasses.replace(
                current, W=dense_like(values, old), source={**consumer.source, "changed": True})
        else:
            parts = list(current.directions)
            parts[k] = dataclasses.replace(parts[k], W=dense_like(values, old))
            replaced[consumer.name] = dataclasses.replace(current, directions=parts)
    return model.replace(layers=[replaced.get(l.name, l) for l in model.layers])


def _zero_units(model, layer, shrunk, energies, counts, why):
    """Zero the removed units of ``layer`` in place (consumer unknown: the width must stay)."""
    for activation in (layer.cell_activation, layer.hidden_activation):
        if activation(np.zeros(1))[0] != 0:
            raise OptionError(
                f"iss: layer {layer.name}: {why}, and a zeroed unit would not output 0 under "
                f"activation {activation.describe()} (nonzero at 0)"
            )
    hidden = layer.hidden_size
    directions, zeroed = [], []
    for direction, (W, R, b, _), energy, count in zip(layer.directions, shrunk, energies, counts):
        dead = np.setdiff1d(np.arange(hidden), top_units(energy, count))
        rows = gate_rows(dead, hidden)
        W, R, b = W.copy(), R.copy(), b.copy()
        W[rows] = 0
        R[rows] = 0
        R[:, dead] = 0
        b[rows] = 0
        directions.append(dataclasses.replace(
            direction, W=dense_like(W, direction.W), R=dense_like(R, direction.R), b=b))
        zeroed.append(dead.tolist())
    new = dataclasses.replace(layer, directions=directions,
                              source={**layer.source, "iss_zeroed": zeroed})
    note = (f"iss: layer {layer.name}: {why}, so {sum(map(len, zeroed))} of "
            f"{hidden * len(zeroed)} units were zeroed in place (output width kept, exact from a "
            "zero initial state); they save bytes only once prune stores the zeros")
    return model.replace(layers=[new if l.name == layer.name else l for l in model.layers],
                         notes=model.notes + [note])


def _reading(consumers):
    """``(consumer, direction index, W)`` for every matrix that reads the layer's ``h``."""
    if consumers is None:
        return []
    return [(c, k, part.W) for c in consumers
            for k, part in enumerate(c.directions if isinstance(c, LSTMLayer) else [c])]
