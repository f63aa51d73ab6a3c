"""The NumPy reference forward pass: the ground truth for every numeric claim rnnshrink makes.

For each direction and time step ``t`` (canonical gate order i, f, g, o)::

    z_t = W x_t + R h_{t-1} + b                    (clipped to [-clip, clip] if clip is set)
    i_t = f(z_i)   f_t = f(z_f)   g_t = g(z_g)   o_t = f(z_o)
    c_t = f_t * c_{t-1} + i_t * g_t
    m_t = o_t * h(c_t)
    h_t = proj @ m_t   if the layer has a projection, else m_t

with f = gate activation (sigmoid), g = cell activation (tanh), h = hidden activation (tanh).
A reverse direction runs the same recurrence over the time-reversed sequence and its outputs
are flipped back, as in the ONNX spec and PyTorch.

Numerics: the same loop can run with other arithmetic (a compute-in-memory simulation,
:mod:`rnnshrink.cim`). A ``numerics`` object supplies ``operators(direction, dtype)`` -> the
products ``W``, ``R`` (and ``proj``) and the bias ``b``, and ``point(name, value)``, applied to
each named intermediate: ``dac_x``, ``dac_h``, ``dac_m`` (inputs of a matrix product),
``adc_x`` (``W x + b``), ``adc_h`` (``R h``), ``adc_m`` (``proj m``), and ``gates`` (z), ``i``,
``f``, ``g``, ``o``, ``fc`` (f * c), ``ig`` (i * g), ``c``, ``tanh_c``, ``m``. The default,
:data:`FLOAT`, is the identity: plain float arithmetic.

References
----------
ONNX ``LSTM`` operator spec (equations, ``clip``, directions); PyTorch ``nn.LSTM`` docs
(``proj_size``: ``h_t = W_hr h_t``); onnx ``onnx/reference/ops/op_lstm.py``.
"""

import numpy as np


class Float:
    """The reference numerics: float arithmetic, every point left as computed."""

    def operators(self, direction, dtype):
        """The products ``W x``, ``R h``, ``proj m`` (None without projection) and the bias."""
        proj = direction.proj.operator(dtype) if direction.proj is not None else None
        return (direction.W.operator(dtype), direction.R.operator(dtype),
                direction.b.astype(dtype), proj)

    def point(self, name, value):
        return value


FLOAT = Float()


def run_direction(layer, direction, x, h0=None, c0=None, reverse=False, dtype=np.float64,
                  numerics=None, cache=None):
    """Run one direction of ``layer`` over a batch of sequences.

    Parameters
    ----------
    layer : LSTMLayer
        Supplies the activations and clip.
    direction : LSTMDirection
    x : ndarray of shape (batch, time, input)
    h0 : ndarray of shape (batch, out), optional
    c0 : ndarray of shape (batch, hidden), optional
    reverse : bool
        Read the sequence from its last step to its first.
    numerics : object, optional
        ``operators`` and ``point`` as in the module docstring; :data:`FLOAT` by default.
    cache : dict, optional
        Filled, for the backward pass (:mod:`rnnshrink.model.backward`), with ``z`` of shape
        (batch, time, 4 * hidden), the gate pre-activations before clipping, and ``c`` of shape
        (batch, time, hidden), the cell states, both in input time order.

    Returns
    -------
    y : ndarray of shape (batch, time, out)
    h : ndarray of shape (batch, out)
    c : ndarray of shape (batch, hidden)
    """
    x = np.asarray(x, dtype=dtype)
    batch, steps, _ = x.shape
    hidden = layer.hidden_size
    h = np.zeros((batch, layer.out_size), dtype) if h0 is None else np.asarray(h0, dtype)
    c = np.zeros((batch, hidden), dtype) if c0 is None else np.asarray(c0, dtype)
    gate, cell, out = layer.gate_activation, layer.cell_activation, layer.hidden_activation
    q = (numerics or FLOAT).point
    input_product, recurrent, b, project = (numerics or FLOAT).operators(direction, dtype)

    # The input product of every step at once, outside the recurrence.
    xw = q("adc_x", input_product(q("dac_x", x)) + b)
    y = np.empty((batch, steps, layer.out_size), dtype)
    if cache is not None:
        cache["z"] = np.empty((batch, steps, 4 * hidden), dtype)
        cache["c"] = np.empty((batch, steps, hidden), dtype)
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    for t in order:
        z = q("gates", xw[:, t] + q("adc_h", recurrent(q("dac_h", h))))
        if cache is not None:
            cache["z"][:, t] = z
        if layer.clip is not None:
            z = np.clip(z, -layer.clip, layer.clip)
        zi, zf, zg, zo = np.split(z, 4, axis=1)
        i, f, g, o = q("i", gate(zi)), q("f", gate(zf)), q("g", cell(zg)), q("o", gate(zo))
        c = q("c", q("fc", f * c) + q("ig", i * g))
        m = q("m", o * q("tanh_c", out(c)))
        h = q("adc_m", project(q("dac_m", m))) if project is not None else m
        y[:, t] = h
        if cache is not None:
            cache["c"][:, t] = c
    return y, h, c


def run_layer(layer, x, initial_state=None, dtype=np.float64, numerics=None, caches=None):
    """Run an LSTM layer (all its directions) over a batch of sequences.

    Parameters
    ----------
    layer : LSTMLayer
    x : ndarray of shape (batch, time, input)
    initial_state : tuple (h0, c0), optional
        ``h0`` of shape (directions, batch, out), ``c0`` of shape (directions, batch, hidden);
        zeros when omitted.
    numerics : object, optional
        ``numerics.direction(layer, k)`` gives direction ``k``'s numerics (see
        :func:`run_direction`); float arithmetic when omitted.
    caches : list, optional
        Gets one :func:`run_direction` ``cache`` dict appended per direction.

    Returns
    -------
    y : ndarray of shape (batch, time, directions * out)
        Directions concatenated forward then reverse on the last axis.
    h : ndarray of shape (directions, batch, out)
    c : ndarray of shape (directions, batch, hidden)
    """
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[2] != layer.input_size:
        raise ValueError(
            f"layer {layer.name} expects input of shape (batch, time, {layer.input_size}), "
            f"got {x.shape}"
        )
    ys, hs, cs = [], [], []
    for k, direction in enumerate(layer.directions):
        h0 = c0 = None
        if initial_state is not None:
            h0, c0 = initial_state[0][k], initial_state[1][k]
        reverse = k == 1 or layer.reverse_only
        arithmetic = numerics.direction(layer, k) if numerics is not None else None
        cache = None if caches is None else {}
        y, h, c = run_direction(layer, direction, x, h0, c0, reverse=reverse, dtype=dtype,
                                numerics=arithmetic, cache=cache)
        if caches is not None:
            caches.append(cache)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    return np.concatenate(ys, axis=2), np.stack(hs), np.stack(cs)


def run_stack(layers, x, dtype=np.float64):
    """Run LSTM layers one after another, each fed the previous one's output sequence.

    Parameters
    ----------
    layers : list of LSTMLayer
        Consecutive layers; each layer's ``input_size`` must equal the previous
        ``output_size``.
    x : ndarray of shape (batch, time, layers[0].input_size)

    Returns
    -------
    list of tuple (y, h, c)
        One :func:`run_layer` result per layer.
    """
    results = []
    for layer in layers:
        results.append(run_layer(layer, x, dtype=dtype))
        x = results[-1][0]
    return results
