"""Slim LSTM variants fitted to a trained LSTM, without retraining.

A Slim LSTM (Akandeh & Salem; :mod:`rnnshrink.model.gated`) lets only the cell candidate see
the input and gives the gates i, f, o reduced parameters. To turn a trained standard LSTM into
a variant, the reduced parameters are fitted so that the variant's gates follow the original's
on real states. Trace the original model on the calibration inputs (the probes or ``--calib``)
and take, for every direction and sampled step, the input ``x_t``, the state ``h_{t-1}`` and the
original pre-activations ``z_g = W_g x_t + R_g h_{t-1} + b_g``. Then, over those samples, per
gate g in i, f, o:

====================  ======================================================================
``U_g h + b_g``       least squares of ``z_g`` on ``[h, 1]``  (LSTM1; LSTM2 without the 1)
``b_g``               ``b_g = mean(z_g)``                       (LSTM3)
``u_g ⊙ h (+ b_g)``   per unit k, 1-D least squares of ``z_gk`` on ``h_k`` (and 1)
                      (LSTM4, 4a, 5, 5a, 10, 11)
fixed ``γ``           the paper's constant: ``b_g = act⁻¹(γ)``, no other term
                      (f = 0.96, o = 1 in LSTM4a / 5a; i = 1, f = 0.4, o = 1 in LSTM6)
====================  ======================================================================

The cell candidate keeps ``W_c``, ``U_c`` and ``b_c``; in LSTM10 / 11 its recurrent part
becomes ``u_c ⊙ h + b_c``, fitted per unit to ``U_c h + b_c``. This is teacher forcing: all
layers are fitted on the original network's states, and nothing compensates for what the
variant cannot express (the gates lose ``W_g x`` entirely), so the output error on a trained
network can be large; the note of each layer gives the fraction of each gate's pre-activation
variance the fit explains (R²).

The gate activation stays the layer's own (the paper's code uses hard_sigmoid because the
layers it trains do). The result stores one folded bias per direction (``bias_terms = 1``).

References
----------
Akandeh & Salem, "Simplified Long Short-term Memory Recurrent Neural Networks: part I / II",
arXiv 1707.04619, 1707.04623, and ``slim22.py`` (``LSTMCell1`` ... ``LSTMCell11``); rnnshrink
``methods.md`` §6.
"""

import dataclasses

import numpy as np

from ..errors import OptionError
from ..model import LSTMDirection
from ..model.gated import GATES, SLIM_VARIANTS, Gated, fixed_bias, variant_specs
from ..model.network import trace_model
from ._consumers import dense_like, require_dense
from .base import Context, Param, Transform
from .gptq import lstm_samples, sample_index


def fit_gate(h, z, recurrent, bias):
    """The reduced parameters of one gate that best reproduce its pre-activations.

    Parameters
    ----------
    h : ndarray of shape (n, P)
        States ``h_{t-1}`` the gate reads.
    z : ndarray of shape (n, H)
        The original pre-activations to reproduce.
    recurrent : {"full", "diag", "zero"}
        ``U h`` (P free), ``u ⊙ h`` (needs ``P == H``) or nothing.
    bias : bool
        Whether the gate has a bias parameter.

    Returns
    -------
    block : ndarray of shape (H, P), ndarray of shape (H,), or None
        ``U``, ``u`` or nothing, by ``recurrent``.
    b : ndarray of shape (H,)
        The bias (zeros without one).

    Notes
    -----
    ``full``: ``argmin ‖[h, 1] [Uᵀ; bᵀ] − z‖_F`` (``np.linalg.lstsq``, minimum norm).
    ``diag``: per unit ``u_k = cov(h_k, z_k) / var(h_k)``, ``b_k = mean(z_k) − u_k mean(h_k)``
    (uncentred moments without a bias); a unit whose state never varies gets ``u_k = 0``.
    ``zero``: ``b = mean(z)``.
    """
    h, z = np.asarray(h, np.float64), np.asarray(z, np.float64)
    hidden = z.shape[1]
    if recurrent == "full":
        design = np.hstack([h, np.ones((len(h), 1))]) if bias else h
        coefficients = np.linalg.lstsq(design, z, rcond=None)[0]
        b = coefficients[-1] if bias else np.zeros(hidden)
        return coefficients[:h.shape[1]].T, b
    if recurrent == "diag":
        h_mean, z_mean = (h.mean(axis=0), z.mean(axis=0)) if bias else (0.0, 0.0)
        hc, zc = h - h_mean, z - z_mean
        variance = (hc * hc).sum(axis=0)
        u = np.divide((hc * zc).sum(axis=0), variance, out=np.zeros(hidden), where=variance > 0)
        return u, (z_mean - u * h_mean) if bias else np.zeros(hidden)
    return None, z.mean(axis=0) if bias else np.zeros(hidden)


def slim_direction(direction, variant, activation, x, h):
    """One direction of a standard LSTM turned into ``variant`` by the fits of the module.

    Parameters
    ----------
    direction : LSTMDirection
        Dense ``W`` (4H, D) and ``R`` (4H, H), no projection.
    variant : str
        One of :data:`rnnshrink.model.gated.SLIM_VARIANTS`.
    activation : Activation
        The layer's gate activation (for the fixed gates' biases).
    x : ndarray of shape (n, D)
    h : ndarray of shape (n, H)
        Inputs and previous states of ``n`` sampled steps of the original direction.

    Returns
    -------
    LSTMDirection
        ``variant`` with :class:`Gated` W and R stored at the original dtypes, one bias term.
    fit : dict of str to float
        Per fitted gate, the fraction of its pre-activations' variance the fit explains (R²);
        per fixed gate (key ``"<gate> fixed at <value>"``), the original gate's mean.
    """
    W, R = direction.W.materialize(), direction.R.materialize()
    b = direction.b.astype(np.float64)
    hidden = b.size // 4
    z = x @ W.T + h @ R.T + b
    W_blocks, R_blocks, biases, fit = [], [], np.zeros(4 * hidden), {}
    for k, spec in enumerate(variant_specs(variant)):
        rows = slice(k * hidden, (k + 1) * hidden)
        W_blocks.append(dense_like(direction.W.values[rows], direction.W) if spec.input else None)
        if spec.fixed is not None:
            R_blocks.append(None)
            biases[rows] = fixed_bias(activation, spec.fixed)
            fit[f"{GATES[k]} fixed at {spec.fixed:g}"] = float(activation(z[:, rows]).mean())
            continue
        if spec.input and spec.recurrent == "full":  # the cell candidate, kept as it is
            R_blocks.append(dense_like(direction.R.values[rows], direction.R))
            biases[rows] = direction.b[rows]
            continue
        target = z[:, rows] - (x @ W[rows].T if spec.input else 0.0)
        block, biases[rows] = fit_gate(h, target, spec.recurrent, spec.bias)
        R_blocks.append(dense_like(block, direction.R) if spec.recurrent == "full" else block)
        fitted = _fitted(h, R_blocks[-1], biases[rows])
        fit[GATES[k]] = _explained(fitted, target)
    new = LSTMDirection(
        W=Gated(W_blocks, W.shape, direction.R.stored_dtype),
        R=Gated(R_blocks, R.shape, direction.R.stored_dtype),
        b=biases.astype(direction.b.dtype), bias_terms=1, bias_dtype=direction.bias_dtype,
        variant=variant)
    return new, fit


def _fitted(h, block, b):
    """What a fitted gate block computes on ``h``, (n, H)."""
    if block is None:
        return np.broadcast_to(b, (len(h), b.size))
    if isinstance(block, np.ndarray):
        return h * block + b
    return h @ block.materialize().T + b


def _explained(fitted, target):
    """R² of ``fitted`` against ``target``: 1 − residual / total sum of squares (1 if constant)."""
    total = np.sum((target - target.mean(axis=0)) ** 2)
    residual = np.sum((target - fitted) ** 2)
    return float(1.0 - residual / total) if total > 0 else float(residual == 0)


def check_slimmable(layer, variant):
    """OptionError unless ``layer`` can become ``variant``: a standard LSTM without projection,
    a gate activation that can hold the fixed gates, and no cell clip that would cut their
    biases."""
    if layer.variant != "LSTM":
        raise OptionError(f"slim: layer {layer.name} is already a {layer.variant}")
    if layer.proj_size:
        raise OptionError(f"slim: layer {layer.name} has a projection (proj_size="
                          f"{layer.proj_size}); Slim variants read h at the hidden width")
    for spec in variant_specs(variant):
        if spec.fixed is None:
            continue
        bias = fixed_bias(layer.gate_activation, spec.fixed)
        if layer.clip is not None and abs(bias) > layer.clip:
            raise OptionError(f"slim: {variant} fixes a gate at {spec.fixed} by the bias "
                              f"{bias:.4g}, which layer {layer.name}'s clip={layer.clip} cuts")


class Slim(Transform):
    """Turn LSTM layers into a Slim LSTM variant, fitted to the original gates on real states.

    Parameters
    ----------
    variant : str
        ``LSTM1``, ``LSTM2``, ``LSTM3``, ``LSTM4``, ``LSTM5``, ``LSTM4a``, ``LSTM5a``,
        ``LSTM6``, ``LSTM10`` or ``LSTM11`` (:mod:`rnnshrink.model.gated`).
    layers : str, optional
        Comma-separated LSTM layer names; all LSTM layers by default.

    Every selected layer is fitted on the original model traced on the context's inputs, at
    most 20,000 seeded (sequence, time) samples per layer; its note gives the fit's R² per
    gate and, per fixed gate, the original gate's mean.

    References
    ----------
    Akandeh & Salem, arXiv 1707.04619 / 1707.04623; rnnshrink ``methods.md`` §6.
    """

    name = "slim"
    PARAMS = {
        "variant": Param(str, None, choices=SLIM_VARIANTS,
                         help="the Slim LSTM variant (Akandeh & Salem) the layers become"),
        "layers": Param(str, None, help="comma-separated LSTM layer names (default: all)"),
    }

    def check(self):
        if self.variant is None:
            raise OptionError(f"slim: give variant=, one of {', '.join(SLIM_VARIANTS)}")

    def apply(self, model, context=None):
        context = context or Context()
        layers = self.selected_layers(model)
        for layer in layers:
            check_slimmable(layer, self.variant)
        require_dense(model, [layer.name for layer in layers], self.name)
        if context.inputs is None:
            raise OptionError("slim: fitting needs calibration inputs (give --calib, or let "
                              "rnnshrink make probes)")
        trace = trace_model(model, context.inputs, context.seed)  # the original's states
        progress = context.step("slim", len(layers))
        notes = list(model.notes)
        for layer in layers:
            inputs, y = trace[layer.name][:2]
            index = sample_index(*inputs.shape[:2], seed=context.seed)
            directions, fits = [], []
            for direction, samples in zip(layer.directions, lstm_samples(layer, inputs, y, index)):
                new, fit = slim_direction(direction, self.variant, layer.gate_activation,
                                          samples["W"], samples["R"])
                directions.append(new)
                fits.append(fit)
            new_layer = dataclasses.replace(layer, directions=directions)
            notes.append(_note(layer, new_layer, fits, len(index[0]), context.probe))
            model = model.replace_layer(layer.name, new_layer)
            progress.update()
        progress.close()
        return model.replace(notes=notes)


def _note(layer, new_layer, fits, samples, probe):
    found = "; ".join(", ".join(
        f"{gate} (was {value:.3f} on average)" if "fixed" in gate else f"{gate} R² {value:.3f}"
        for gate, value in fit.items()) for fit in fits)
    return (f"slim {layer.name}: {new_layer.variant} fitted on {samples} states of "
            f"{probe or 'the given inputs'} ({found}); LSTM params {layer.params:,} -> "
            f"{new_layer.params:,}")
