"""Second moments of an LSTM layer's real inputs and outputs, for the data-aware transforms.

``svd``, ``lowrank`` and ``iss`` with ``data=true`` minimise the error of what a matrix
computes on calibration data, ``E‖(M − M̂) v‖² = ‖(M − M̂) C^{1/2}‖_F²`` with
``C = E[v vᵀ]`` the second moment of the vectors ``v`` the matrix reads (whitening). This
module is the one place that estimates ``C``, takes its square roots and solves the least
squares fits on it.

Every ``C`` used is *floored*: its symmetric eigendecomposition with eigenvalues raised to at
least ``FLOOR · trace(C) / n``, so ``C^{-1/2}`` exists and directions the data never visit
are not blown up. ``C = I`` is left as it is, so with white data the data-aware variants reduce
to the plain ones.
"""

import numpy as np

from ..errors import OptionError
from ..model.network import trace_model

FLOOR = 1e-6


def calibration(context, owner):
    """The calibration inputs (batch, time, input) of ``context``; OptionError when absent."""
    inputs = getattr(context, "inputs", None)
    if inputs is None:
        raise OptionError(f"{owner}: data=true needs calibration inputs "
                          f"(give --calib, or let rnnshrink make probes)")
    return inputs


def second_moment(samples):
    """``E[v vᵀ]`` over all leading axes of ``samples`` (..., n); ndarray (n, n), float64."""
    v = np.asarray(samples, dtype=np.float64).reshape(-1, np.shape(samples)[-1])
    return v.T @ v / max(len(v), 1)


def layer_moments(model, x, name):
    """Second moments of what LSTM layer ``name`` reads and outputs, traced on ``x``.

    Parameters
    ----------
    model : Model
    x : ndarray of shape (batch, time, input of the first LSTM layer)
    name : str

    Returns
    -------
    inputs : ndarray of shape (D, D)
        ``E[x xᵀ]`` of the layer's input sequence (what every direction's ``W`` reads).
    outputs : list of ndarray of shape (out, out)
        Per direction, ``E[h hᵀ]`` of its output ``h`` (``m = o ⊙ tanh(c)`` when the layer has
        no projection): what its ``R`` and the consumers' column block read (all steps, so
        ``h_{t-1}`` up to the first and last state).
    """
    inputs, y, _, _ = trace_model(model, x)[name]
    layer = model.layer(name)
    out = layer.out_size
    return second_moment(inputs), [second_moment(y[..., d * out:(d + 1) * out])
                                   for d in range(layer.num_directions)]


def _floored_eigh(C):
    """Eigenvalues (raised to the floor) and eigenvectors of the symmetric ``C``."""
    C = np.asarray(C, dtype=np.float64)
    lam, Q = np.linalg.eigh((C + C.T) / 2)
    scale = np.trace(C) / len(C)
    return np.maximum(lam, FLOOR * (scale if scale > 0 else 1.0)), Q


def floored(C):
    """``C`` with its eigenvalues raised to the floor; ndarray (n, n)."""
    lam, Q = _floored_eigh(C)
    return (Q * lam) @ Q.T


def sqrt_pair(C):
    """``(C^{1/2}, C^{-1/2})`` of the floored ``C``, both symmetric (n, n)."""
    lam, Q = _floored_eigh(C)
    root = np.sqrt(lam)
    return (Q * root) @ Q.T, (Q / root) @ Q.T


def whiten(matrix, root):
    """``matrix @ root`` (``root`` a power of the data's second moment), or ``matrix`` if None."""
    return matrix if root is None else matrix @ root


def refit_on_data(K, A, C):
    """The least-squares reader of ``A v`` that best reproduces ``K v`` on data.

    Parameters
    ----------
    K : ndarray of shape (out, n)
        What the reader computed from ``v``.
    A : ndarray of shape (r, n)
        The new input map: a projection, or the rows of ``I`` that select surviving units.
    C : ndarray of shape (n, n)
        ``E[v vᵀ]`` (floored here).

    Returns
    -------
    ndarray of shape (out, r)
        ``argmin_Z E‖K v − Z A v‖² = K C Aᵀ (A C Aᵀ)⁻¹``.
    """
    C = floored(C)
    K, A = np.asarray(K, np.float64), np.asarray(A, np.float64)
    gram = A @ C @ A.T
    return np.linalg.lstsq(gram, (K @ C @ A.T).T, rcond=None)[0].T
