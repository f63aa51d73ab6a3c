"""k-bit quantization of LSTM weights with QuantizedLSTM's symmetric uniform quantizer.

With ``s = 2^(b-1)`` and a clipping range ``a`` per block (tensor, row, or group of columns)::

    y = clamp(x / a, -1 + 1/s, 1 - 1/s)        Q(x) = round(y s) / s · a

so the integer codes ``round(y s)`` lie in ``[-(s-1), s-1]`` (``2^b - 1`` levels) and the step
is ``a / s``. The step is rounded up to float16 *first* (that is what the file stores) and
the codes are computed with the stored step, so ``codes · step`` is exactly the value computed:
equivalently ``a`` is replaced by ``s · step >= a`` (at most 2^-10 larger). Rounding is
NumPy's ``np.round`` (half to even), as ``jnp.round`` in the authors' code. The top code is
``s - 1``, so values in ``((s - 1/2) step, a]`` are clamped: with ``a = max|x|`` the largest
weights are off by up to one step, every other weight by at most half a step.

``a`` is the block's ``max|x|`` (``clip="max"``) or the clip of smallest squared error over
``max|x|`` times 50 fractions from 0.5 to 1.0 (``clip="mse"``). A block of zeros gets step 1
and codes 0. ``bits=16`` stores the weights as float16 instead.

``method="gptq"`` keeps that grid (the same steps, so the same bytes) and picks the codes with
GPTQ's error compensation (:mod:`.gptq`) instead of rounding each weight alone, from
``H = E[x xᵀ]`` of the inputs each matrix reads on the calibration inputs.

References
----------
rnnshrink ``methods.md`` §5; QuantizedLSTM (Intelligent-Microsystems-Lab, "LSTMs for Keyword
Spotting with ReRAM-based Compute-In-Memory Architectures", ISCAS 2021), functions ``clip``,
``quant`` and ``cq`` of its code. GPTQ (Frantar et al., ICLR 2023), Algorithm 1: see
:mod:`.gptq`.
"""

import dataclasses

import numpy as np

from ..errors import OptionError
from ..model.network import trace_model
from ..model.coded import EntropyCoded
from ..model.gated import Gated
from ..model.weights import Dense, LowRank, Quantized, Sparse, Weight
from .base import Context, Param, Transform
from .gptq import gptq_codes, hessian, lstm_samples, sample_index

# Fractions of max|x| the "mse" clip search tries, largest first (ties keep the larger clip).
CLIP_FRACTIONS = np.linspace(0.5, 1.0, 50)[::-1]


def step_size(amax, bits):
    """The step ``a / s`` rounded up to float16, for blocks with clipping range ``amax``.

    Rounding up keeps ``s · step >= a``: the stored clip range still covers ``a``. A block of
    zeros gets step 1 (its codes are 0).

    Parameters
    ----------
    amax : ndarray of shape (...)
    bits : int in [2, 8]

    Returns
    -------
    ndarray of float64, shape as ``amax``
    """
    exact = amax / 2 ** (bits - 1)
    with np.errstate(over="ignore"):
        step = np.asarray(exact, dtype=np.float16)
    step = np.where(step < exact, np.nextafter(step, np.float16(np.inf)), step).astype(np.float64)
    if not np.all(np.isfinite(step)):
        raise OptionError(f"quant: weights up to {np.max(amax):.3g} need steps beyond float16")
    return np.where(step > 0, step, 1.0)


def quantize_codes(x, step, bits):
    """QuantizedLSTM's codes ``round(clamp(x / a, -1 + 1/s, 1 - 1/s) · s)`` with ``a = s · step``.

    Parameters
    ----------
    x : ndarray of shape (..., n)
    step : ndarray of shape (...) or broadcastable to ``x[..., 0]``
    bits : int in [2, 8]

    Returns
    -------
    ndarray of int8, shape as ``x``, values in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``
    """
    limit = 2 ** (bits - 1) - 1
    return np.clip(np.round(x / step[..., None]), -limit, limit).astype(np.int8)


def block_steps(blocks, bits, clip="max"):
    """The step of every block: ``max|x| / s`` or the squared-error-optimal clip's.

    Parameters
    ----------
    blocks : ndarray of shape (rows, groups, width)
        Padding entries must be zero (they quantize to zero and add no error).
    bits : int in [2, 8]
    clip : {"max", "mse"}

    Returns
    -------
    ndarray of float64, shape (rows, groups)
        Steps exactly representable in float16.
    """
    amax = np.abs(blocks).max(axis=-1)
    best = step_size(amax, bits)
    if clip == "max":
        return best
    error = _squared_error(blocks, best, bits)
    for fraction in CLIP_FRACTIONS[1:]:
        step = step_size(fraction * amax, bits)
        candidate = _squared_error(blocks, step, bits)
        better = candidate < error
        best, error = np.where(better, step, best), np.where(better, candidate, error)
    return best


def _squared_error(blocks, step, bits):
    return ((blocks - quantize_codes(blocks, step, bits) * step[..., None]) ** 2).sum(axis=-1)


def _blocks(x, scales, group):
    """``x`` (rows, cols) as zero-padded blocks (rows', groups, width) sharing one step."""
    rows, cols = x.shape
    if scales == "tensor":
        return x.reshape(1, 1, -1)
    if scales == "row" or group >= cols:
        return x.reshape(rows, 1, cols)
    groups = -(-cols // group)
    padded = np.zeros((rows, groups * group), x.dtype)
    padded[:, :cols] = x
    return padded.reshape(rows, groups, group)


def quantize_matrix(x, bits, scales="row", group=64, clip="max", mask=None, inputs=None,
                    damp=0.01):
    """Quantize one matrix with a step per tensor, per row, or per group of columns.

    Parameters
    ----------
    x : ndarray of shape (rows, cols)
    bits : int in [2, 8]
    scales : {"tensor", "row", "group"}
    group : int
        Columns per step when ``scales="group"``.
    clip : {"max", "mse"}
    mask : ndarray of bool, shape (rows, cols), optional
        Stored positions of a pruned matrix (``x`` is zero elsewhere); kept as is.
    inputs : ndarray of shape (n, cols), optional
        Samples of the inputs ``x`` reads: the codes are GPTQ's (:func:`.gptq.gptq_codes`) on
        the same steps, instead of the rounded weights.
    damp : float
        GPTQ's dampening of ``H``, a fraction of its mean diagonal.

    Returns
    -------
    Quantized
        ``materialize()`` gives exactly ``codes · step`` as computed here.
    """
    x = np.asarray(x, dtype=np.float64)
    rows, cols = x.shape
    blocks = _blocks(x, scales, group)
    steps = block_steps(blocks, bits, clip)
    grouped = scales == "group" and group < cols
    if inputs is None:
        codes = quantize_codes(blocks, steps, bits)
        codes = codes.reshape(rows, -1)[:, :cols]  # drop the padding of the last group
    else:
        codes = gptq_codes(x, hessian(inputs), steps, bits, group if grouped else None, mask, damp)
    return Quantized(codes, steps, bits, group if grouped else None, mask)


def quantize_weight(weight, bits, scales="row", group=64, clip="max", inputs=None, damp=0.01):
    """Quantize a weight of any kind: a dense matrix, both low-rank factors, a sparse matrix's
    kept entries (the mask is kept), the full blocks of a gated matrix (its diagonals are kept),
    or store it as float16 when ``bits == 16``.

    With ``inputs`` (samples (n, cols) of what ``weight`` reads) the codes are GPTQ's; a
    low-rank ``U V`` quantizes ``V`` on ``inputs``, then ``U`` on what it reads in the
    quantized model, ``V̂ x``.

    Raises
    ------
    OptionError
        ``weight`` (or one of its factors) is already quantized (or entropy coded).
    """
    if isinstance(weight, LowRank):
        V = quantize_weight(weight.V, bits, scales, group, clip, inputs, damp)
        inner = None if inputs is None else inputs @ V.materialize().T
        return LowRank(quantize_weight(weight.U, bits, scales, group, clip, inner, damp), V)
    if isinstance(weight, Gated):  # the full gate blocks; diagonals stay as they are
        return Gated([quantize_weight(b, bits, scales, group, clip, inputs, damp)
                      if isinstance(b, Weight) else b for b in weight.blocks],
                     weight.shape, weight.diag_dtype)
    if isinstance(weight, (Quantized, EntropyCoded)):
        raise OptionError("quant: the weight is already quantized")
    if bits == 16:
        return _float16(weight)
    mask = weight.mask if isinstance(weight, Sparse) else None
    return quantize_matrix(weight.materialize(), bits, scales, group, clip, mask, inputs, damp)


def _float16(weight):
    """``weight`` (Dense or Sparse) with its values stored as float16."""
    if isinstance(weight, Sparse):
        new = Sparse(weight.mask, weight.values, "float16")
    else:
        new = Dense(weight.values, "float16")
    if not np.all(np.isfinite(new.values)):
        raise OptionError("quant: bits=16: weights beyond the float16 range (65504)")
    return new


class Quantize(Transform):
    """Quantize every LSTM matrix (and projection) to ``bits``-bit codes and float16 steps.

    Parameters
    ----------
    bits : int
        2 to 8, or 16 for float16 storage.
    scales : {"tensor", "row", "group"}
        One step per matrix, per output row, or per ``group`` input columns of a row.
    group : int
        Columns per step; giving it implies ``scales=group``.
    clip : {"max", "mse"}
        Clipping range per block: ``max|x|``, or the squared-error-optimal fraction of it.
    method : {"rtn", "gptq"}
        Round each weight to the nearest code, or GPTQ's error-compensating codes on the same
        steps, from the calibration inputs of the context. Layers are done in model order,
        each traced on the model whose earlier layers are already quantized (GPTQ's
        sequential inputs); at most 20,000 seeded (sequence, time) samples per layer.
    damp : float
        GPTQ's dampening of ``H = E[x xᵀ]``: this fraction of its mean diagonal is added.
    layers : str, optional
        Comma-separated LSTM layer names; all LSTM layers by default.

    References
    ----------
    rnnshrink ``methods.md`` §5 (QuantizedLSTM, ISCAS 2021) and §8 (GPTQ rounding); Frantar
    et al., "GPTQ", ICLR 2023, Algorithm 1.
    """

    name = "quant"
    PARAMS = {
        "bits": Param(int, 8, choices=(2, 3, 4, 5, 6, 7, 8, 16),
                      help="code width; 16 stores float16 instead of codes"),
        "scales": Param(str, "row", choices=("tensor", "row", "group"),
                        help="one float16 step per tensor, per row, or per group of columns"),
        "group": Param(int, 64, 1, None, help="columns sharing a step (implies scales=group)"),
        "clip": Param(str, "max", choices=("max", "mse"),
                      help="clipping range per block: max|w|, or searched for least squared error"),
        "method": Param(str, "rtn", choices=("rtn", "gptq"),
                        help="round to nearest, or GPTQ error compensation on calibration inputs"),
        "damp": Param(float, 0.01, 0.0, None,
                      help="gptq: dampening of E[x x^T], a fraction of its mean diagonal"),
        "layers": Param(str, None, help="comma-separated LSTM layer names (default: all)"),
    }

    def check(self):
        if "group" in self.given:
            if self.given.get("scales", "group") != "group":
                raise OptionError(
                    f"quant: group={self.group} needs scales=group, got scales={self.scales}"
                )
            self.params["scales"] = "group"
        if self.bits == 16:
            extra = sorted(set(self.given) & {"scales", "group", "clip", "damp"})
            extra += ["method=gptq"] if self.method == "gptq" else []
            if extra:
                raise OptionError(
                    f"quant: {', '.join(extra)} do not apply to bits=16 (float16 storage)"
                )
        if "damp" in self.given and self.method != "gptq":
            raise OptionError(f"quant: damp={self.damp} applies to method=gptq only")

    def apply(self, model, context=None):
        context = context or Context()
        layers = self.selected_layers(model)
        gptq = self.method == "gptq"
        if gptq and context.inputs is None:
            raise OptionError("quant: method=gptq needs calibration inputs")
        progress = context.step("quant", len(layers))
        notes = list(model.notes)
        current = model
        for layer in layers:
            samples = self._samples(current, layer, context) if gptq else None
            directions, kept = [], []
            for k, direction in enumerate(layer.directions):
                changes = {}
                for role, weight in direction.matrices.items():
                    inputs = samples[k][role] if gptq else None
                    try:
                        new = quantize_weight(weight, self.bits, self.scales, self.group, self.clip,
                                              inputs, self.damp)
                    except OptionError as error:
                        raise OptionError(f"{error} (layer {layer.name} {role}[{k}])") from None
                    if new.nbytes >= weight.nbytes:
                        kept.append(f"{role}[{k}]")
                        new = weight
                    changes[role] = new
                directions.append(dataclasses.replace(direction, **changes))
            current = current.replace_layer(
                layer.name, dataclasses.replace(layer, directions=directions))
            if kept:
                notes.append(
                    f"quant: layer {layer.name}: {', '.join(kept)} kept as they were: "
                    f"{self.spec()} would not make them smaller"
                )
            progress.update()
        progress.close()
        if gptq:
            notes.append(f"quant: method=gptq calibrated on {context.probe or 'the given inputs'}")
        return current.replace(notes=notes)

    def _samples(self, model, layer, context):
        """Per direction and role, the sampled inputs ``layer``'s matrices read in ``model``."""
        trace = trace_model(model, context.inputs, context.seed)
        inputs, y = trace[layer.name][:2]
        index = sample_index(*inputs.shape[:2], seed=context.seed)
        return lstm_samples(layer, inputs, y, index)
