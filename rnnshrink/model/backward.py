"""Backpropagation through time (BPTT) through the reference forward pass, per sequence.

The forward pass is :func:`rnnshrink.model.forward.run_layer` itself, asked to keep its gate
pre-activations ``z`` and cell states ``c``; nothing here recomputes the recurrence. For one
direction (gates i, f, g, o; ``f``, ``g``, ``h`` the gate, cell and hidden activations, ``z``
clipped to ``[-clip, clip]`` when the layer has a clip), walking the steps in the reverse of
the order the direction read them::

    dh_t  = dy_t + Rᵀ dz_{t+1}                       (the next step's recurrent input)
    dm_t  = projᵀ dh_t   (dh_t without a projection;  dproj += dh_t m_tᵀ)
    dc_t  = dc_{t+1} ⊙ f_{t+1} + dm_t ⊙ o_t ⊙ h'(c_t)
    dz_o  = dm_t ⊙ h(c_t) ⊙ f'(z_o)     dz_i = dc_t ⊙ g_t ⊙ f'(z_i)
    dz_f  = dc_t ⊙ c_{t-1} ⊙ f'(z_f)    dz_g = dc_t ⊙ i_t ⊙ g'(z_g)
    dz_t  ← dz_t ⊙ [|z_t| < clip]                     (clip only)
    dW += dz_t x_tᵀ    dR += dz_t h_{t-1}ᵀ    db += dz_t    dx_t = Wᵀ dz_t

The loss is the softmax cross-entropy of a Dense head on the last layer's outputs, summed over
the time steps of each sequence; every gradient keeps the sequence axis (per-sequence
gradients, as the Fisher information of :mod:`rnnshrink.sensitivity` needs them).

References
----------
Werbos, "Backpropagation through time: what it does and how to do it", Proc. IEEE 78(10),
1990; Graves & Schmidhuber, "Framewise phoneme classification with bidirectional LSTM",
Neural Networks 18, 2005 (the LSTM gradient equations); rnnshrink ``methods.md`` §8.
"""

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, softmax

from ..errors import OptionError
from .forward import run_layer
from .network import apply_dense

# activation name -> derivative(x, alpha, beta) at the pre-activation x
_DERIVATIVES = {
    "sigmoid": lambda x, a, b: _sigmoid_slope(expit(x)),
    "tanh": lambda x, a, b: 1.0 - np.tanh(x) ** 2,
    "relu": lambda x, a, b: (x > 0).astype(x.dtype),
    "hard_sigmoid": lambda x, a, b: a * ((a * x + b > 0) & (a * x + b < 1)),
    "linear": lambda x, a, b: np.ones_like(x),
    "affine": lambda x, a, b: np.full_like(x, a),
    "scaled_tanh": lambda x, a, b: a * b * (1.0 - np.tanh(b * x) ** 2),
    "leaky_relu": lambda x, a, b: np.where(x >= 0, 1.0, a),
    "thresholded_relu": lambda x, a, b: (x > a).astype(x.dtype),
    "elu": lambda x, a, b: np.where(x >= 0, 1.0, a * np.exp(np.minimum(x, 0))),
    "softsign": lambda x, a, b: 1.0 / (1.0 + np.abs(x)) ** 2,
    "softplus": lambda x, a, b: expit(x),
}


def _sigmoid_slope(s):
    return s * (1.0 - s)


def derivative(activation, x):
    """``activation'(x)`` elementwise (0 at the kinks of piecewise-linear ones, as torch).

    Raises
    ------
    OptionError
        An activation with no derivative here (the message names it).
    """
    if activation.name not in _DERIVATIVES:
        raise OptionError(f"no gradient for activation {activation.describe()}")
    return _DERIVATIVES[activation.name](x, activation.alpha, activation.beta)


@dataclass
class Tape:
    """What :func:`stack_backward` needs from the forward pass of an LSTM chain and its head.

    Attributes
    ----------
    layers : list of LSTMLayer
    head : DenseLayer
    inputs : list of ndarray of shape (batch, time, input of the layer)
    outputs : list of ndarray of shape (batch, time, output of the layer)
    caches : list of list of dict
        Per layer, per direction, :func:`~rnnshrink.model.forward.run_direction`'s cache.
    logits : ndarray of shape (batch, time, classes)
        The head's outputs, whose softmax is the model's output distribution.
    """

    layers: list
    head: object
    inputs: list
    outputs: list
    caches: list
    logits: np.ndarray


def stack_forward(layers, x, head):
    """Run an LSTM chain (each layer fed the previous one's output) and its head, keeping a tape.

    Parameters
    ----------
    layers : list of LSTMLayer
    x : ndarray of shape (batch, time, layers[0].input_size)
    head : DenseLayer
        Reads the last layer's output sequence at every step; its outputs are logits.

    Returns
    -------
    Tape
    """
    inputs, outputs, caches = [], [], []
    x = np.asarray(x, dtype=np.float64)
    for layer in layers:
        caches.append([])
        inputs.append(x)
        x = run_layer(layer, x, caches=caches[-1])[0]
        outputs.append(x)
    return Tape(layers, head, inputs, outputs, caches, np.asarray(apply_dense(head, x)))


def stack_backward(tape, labels):
    """Per-sequence gradients of ``Σ_t −log softmax(logits_t)[labels_t]`` for every parameter.

    Parameters
    ----------
    tape : Tape
        From :func:`stack_forward`.
    labels : ndarray of int, shape (batch, time)

    Returns
    -------
    grads : dict of tuple to ndarray of float64
        ``(layer name, direction index, role)`` with role ``W`` (batch, 4H, D), ``R``
        (batch, 4H, P), ``b`` (batch, 4H) and ``proj`` (batch, P, H) where the layer has one;
        ``(head name, 0, "W")`` (batch, classes, in) and ``(head name, 0, "b")``
        (batch, classes) where the head has a bias.
    dx : ndarray of shape (batch, time, layers[0].input_size)
        Gradient of each sequence's loss with respect to the chain's inputs.
    """
    labels = np.asarray(labels)
    dlogits = softmax(tape.logits, axis=-1)
    batch, steps = labels.shape
    dlogits[np.arange(batch)[:, None], np.arange(steps)[None, :], labels] -= 1.0
    head, last = tape.head, tape.outputs[-1]
    grads = {(head.name, 0, "W"): np.matmul(dlogits.transpose(0, 2, 1), last)}
    if head.b is not None:
        grads[(head.name, 0, "b")] = dlogits.sum(axis=1)
    dy = dlogits @ head.W.materialize(np.float64)
    for index in range(len(tape.layers) - 1, -1, -1):
        layer, x = tape.layers[index], tape.inputs[index]
        out = layer.out_size
        dx = np.zeros_like(x)
        for k, (direction, cache) in enumerate(zip(layer.directions, tape.caches[index])):
            part = slice(k * out, (k + 1) * out)
            found, dx_k = direction_backward(layer, direction, x, tape.outputs[index][..., part],
                                             cache, dy[..., part], k == 1 or layer.reverse_only)
            grads.update({(layer.name, k, role): g for role, g in found.items()})
            dx += dx_k
        dy = dx
    return grads, dy


def direction_backward(layer, direction, x, y, cache, dy, reverse=False):
    """BPTT through one direction that started from zero states (the equations above).

    Parameters
    ----------
    layer : LSTMLayer
    direction : LSTMDirection
    x : ndarray of shape (batch, time, input)
    y : ndarray of shape (batch, time, out)
        The direction's output sequence.
    cache : dict
        ``z`` and ``c`` from :func:`~rnnshrink.model.forward.run_direction`.
    dy : ndarray of shape (batch, time, out)
        Gradient of the loss with respect to ``y``.
    reverse : bool

    Returns
    -------
    grads : dict of str to ndarray
        Per-sequence ``W`` (batch, 4H, D), ``R`` (batch, 4H, P), ``b`` (batch, 4H) and
        ``proj`` (batch, P, H) when the direction has a projection.
    dx : ndarray of shape (batch, time, input)
    """
    z, c = cache["z"], cache["c"]
    gate, cell, hidden = layer.gate_activation, layer.cell_activation, layer.hidden_activation
    passes = None
    if layer.clip is not None:
        passes = np.abs(z) < layer.clip
        z = np.clip(z, -layer.clip, layer.clip)
    zi, zf, zg, zo = np.split(z, 4, axis=2)
    i, f, o, tanh_c = gate(zi), gate(zf), gate(zo), hidden(c)
    c_prev, h_prev = _previous(c, reverse), _previous(y, reverse)
    # the factors of the equations above that do not depend on the recurrence, time-major
    to_c, to_zo, to_zi, to_zf, to_zg, f_t, dy_t = (
        np.ascontiguousarray(a.transpose(1, 0, 2)) for a in (
            o * derivative(hidden, c), tanh_c * derivative(gate, zo),
            cell(zg) * derivative(gate, zi), c_prev * derivative(gate, zf),
            i * derivative(cell, zg), f, dy))
    R = direction.R.materialize(np.float64)
    proj = None if direction.proj is None else direction.proj.materialize(np.float64)
    batch, steps, hidden4 = z.shape
    H = hidden4 // 4
    dz = np.empty((steps, batch, hidden4))
    dh_all = np.empty_like(dy_t) if proj is not None else None
    dh_next = np.zeros_like(dy_t[0])
    dc_next = np.zeros_like(to_c[0])
    for t in (range(steps) if reverse else range(steps - 1, -1, -1)):
        dh = dy_t[t] + dh_next
        if proj is not None:
            dh_all[t] = dh
            dm = dh @ proj
        else:
            dm = dh
        dc = dc_next + dm * to_c[t]
        step = dz[t]
        np.multiply(dc, to_zi[t], out=step[:, :H])
        np.multiply(dc, to_zf[t], out=step[:, H:2 * H])
        np.multiply(dc, to_zg[t], out=step[:, 2 * H:3 * H])
        np.multiply(dm, to_zo[t], out=step[:, 3 * H:])
        if passes is not None:
            step *= passes[:, t]
        dc_next = dc * f_t[t]
        dh_next = step @ R
    dz = dz.transpose(1, 0, 2)
    dzT = dz.transpose(0, 2, 1)
    grads = {"W": np.matmul(dzT, x), "R": np.matmul(dzT, h_prev), "b": dz.sum(axis=1)}
    if proj is not None:
        grads["proj"] = np.matmul(dh_all.transpose(1, 2, 0), o * tanh_c)
    return grads, dz @ direction.W.materialize(np.float64)


def _previous(sequence, reverse):
    """The state each step started from: the neighbour the direction read before (zeros first)."""
    shifted = np.zeros_like(sequence)
    if reverse:
        shifted[:, :-1] = sequence[:, 1:]
    else:
        shifted[:, 1:] = sequence[:, :-1]
    return shifted
