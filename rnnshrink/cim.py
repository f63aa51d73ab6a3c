"""Compute-in-memory numerics for the reference LSTM pass (QuantizedLSTM, methods.md §5).

In a compute-in-memory LSTM the products ``W x_t + b`` and ``R h_{t-1}`` (and ``proj m_t``)
are computed in analog crossbars whose weights are conductances; everything between the
crossbars is digital. The QuantizedLSTM code quantizes at these points of
:func:`rnnshrink.model.forward.run_direction`, each ``Q(pact(v, a), bits, a)``:

========================================  ==================  ===========================
point                                     hook names          setting
========================================  ==================  ===========================
crossbar inputs x_t, h_{t-1}, m_t (DAC)   dac_x dac_h dac_m   ``input_bits``
matrix-vector outputs (ADC)               adc_x adc_h adc_m   ``adc_bits``, ``adc_clip``
gate sum, gate values, f*c, i*g, c,       gates i f g o fc    ``state_bits``
tanh(c), h (digital arithmetic)           ig c tanh_c m
weights and biases (conductances)         --                  ``weight_bits``, ``max_w``,
                                                              ``noise``, ``weight_map``
========================================  ==================  ===========================

A point whose bits are off (None or 0) is left exactly as computed, so with every setting off
the simulation is the float reference, bit for bit.

Clipping ranges. The code learns each point's range ``a`` as a PACT parameter while training.
A model trained without them gets static ranges instead, calibrated like a converter's full
scale: ``a`` = the largest magnitude the point takes in the float run on the same inputs
(:class:`Peaks`); ``adc_clip`` replaces the calibrated range of the ADC points.

Weights (``weight_map``). The code clamps weights to ``±max_w`` (0.1-0.2) and biases to
``±rows_bias``, quantizes both with ``a = 1`` and adds Gaussian noise ``σ = noise · max_w``:
it assumes weights trained inside that range. A trained float model's are not (the char LM's
reach ±2.4), so by default (``"scale"``) each matrix is mapped onto the crossbar as a real
array is programmed: divided by its largest magnitude ``k`` so it spans the full conductance
range, the code's rules applied there with ``max_w = 1`` (its module default), and ``k``
multiplied back after the product. The bias shares the input matrix's ``k`` (it sits on bias
rows of that crossbar). Noise is then ``σ = noise · max|M|`` in model units. ``"clamp"``
applies the code's rules to the weights as trained (``σ = noise · max_w``).

Noise is redrawn per sequence: each sequence of a batch sees its own ``W + E``, ``R + E``,
``b + e`` (one draw per sequence, fixed over its time steps), added in the forward pass only.

References
----------
QuantizedLSTM: "LSTMs for Keyword Spotting with ReRAM-based Compute-In-Memory Architectures",
ISCAS 2021; code Intelligent-Microsystems-Lab/QuantizedLSTM, ``model.py`` (``QuantFunc``,
``pact_a``, ``CustomMM_bmm``, ``LSTMCellQ_bmm``). PACT: Choi et al., "PACT: Parameterized
Clipping Activation for Quantized Neural Networks", arXiv 1805.06085, 2018.
rnnshrink ``methods.md`` §5.
"""

import dataclasses

import numpy as np

from .errors import OptionError
from .model.forward import FLOAT, Float

DAC_POINTS = ("dac_x", "dac_h", "dac_m")
ADC_POINTS = ("adc_x", "adc_h", "adc_m")
STATE_POINTS = ("gates", "i", "f", "g", "o", "fc", "ig", "c", "tanh_c", "m")
WEIGHT_MAPS = ("scale", "clamp")
MAX_BITS = 16


def quantize(x, bits, a):
    """QuantizedLSTM's quantizer ``Q(x; b, a)``: symmetric, uniform, ``2**b - 1`` levels.

    With ``s = 2**(b-1)``: ``y = clip(x / a, -1 + 1/s, 1 - 1/s)``, ``Q = round(y s) / s · a``
    (round half to even, as ``torch.round``).

    Parameters
    ----------
    x : ndarray
    bits : int or None
        None or 0: ``x`` unchanged.
    a : float or ndarray broadcastable to ``x``
        The clipping range.

    References
    ----------
    QuantizedLSTM ``model.py`` ``QuantFunc.forward``; methods.md §5.
    """
    if not bits:
        return x
    s = 2.0 ** (bits - 1)
    y = np.clip(x / a, -1 + 1 / s, 1 - 1 / s)
    return np.round(y * s) / s * a


def pact(x, a):
    """PACT clipping ``sign(x) · min(|x|, a)`` (``a > 0``): the code's
    ``sign(x) · (|x| − ||x| − a| + a) / 2``.

    References
    ----------
    Choi et al. 2018, Eq. 1 (symmetric form); QuantizedLSTM ``model.py`` ``pact_a``.
    """
    return np.clip(x, -a, a)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The converter and device parameters of a compute-in-memory LSTM; None / 0 bits = ideal.

    Parameters
    ----------
    input_bits, adc_bits, state_bits, weight_bits : int, optional
        DAC, ADC, digital state/gate and weight-conductance bits, each 0/None or 2..16.
    adc_clip : float, optional
        PACT clip of the matrix-vector outputs in pre-activation units (default: calibrated).
    weight_map : {"scale", "clamp"}
        How trained weights reach the crossbar (module docstring).
    max_w : float
        The code's largest weight; used by ``weight_map="clamp"``.
    rows_bias : float
        Bias bound in weight units (the code's bias rows).
    noise : float
        Weight noise ``nl``: ``σ = nl · max_w`` (``max|M|`` with ``"scale"``).
    """

    input_bits: int = None
    adc_bits: int = None
    adc_clip: float = None
    state_bits: int = None
    weight_bits: int = None
    weight_map: str = "scale"
    max_w: float = 0.2
    rows_bias: float = 6.0
    noise: float = 0.0

    def __post_init__(self):
        for name in ("input_bits", "adc_bits", "state_bits", "weight_bits"):
            bits = getattr(self, name)
            if bits is not None and (not isinstance(bits, (int, np.integer)) or isinstance(bits, bool)
                                     or not (bits == 0 or 2 <= bits <= MAX_BITS)):
                raise OptionError(f"{option(name)} must be 0 (off) or an integer in "
                                  f"[2, {MAX_BITS}], got {bits!r}")
        for name in ("adc_clip", "max_w", "rows_bias"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise OptionError(f"{option(name)} must be a positive number, got {value!r}")
        if not (np.isfinite(self.noise) and 0 <= self.noise <= 10):
            raise OptionError(f"{option('noise')} must be in [0, 10], got {self.noise!r}")
        if self.weight_map not in WEIGHT_MAPS:
            raise OptionError(f"{option('weight_map')} must be one of {', '.join(WEIGHT_MAPS)}, "
                              f"got {self.weight_map!r}")
        if self.adc_clip is not None and not self.adc_bits:
            raise OptionError("--adc-clip needs --adc-bits (the clip belongs to the ADC)")

    @property
    def programmed(self):
        """Whether the weights differ from the float model's (bits, noise or clamping)."""
        return bool(self.weight_bits) or self.noise > 0 or self.weight_map == "clamp"

    def bits(self, point):
        """The bits of a named point (None: left as computed)."""
        if point in DAC_POINTS:
            return self.input_bits or None
        if point in ADC_POINTS:
            return self.adc_bits or None
        return self.state_bits or None


def option(field):
    """The command-line spelling of a :class:`Settings` field: ``--input-bits``."""
    return "--" + field.replace("_", "-")


def program(matrix, settings, bias=None):
    """A weight matrix (and its bias) as the crossbar holds them, in model units.

    ``"scale"``: ``k = max|M|``; ``"clamp"``: ``k = 1``. In crossbar units ``M / k`` is clamped
    to ``±limit`` (``1`` or ``max_w``), the bias ``b / k`` to ``±rows_bias``, both quantized
    with ``Q(·; weight_bits, 1)``; the results are multiplied back by ``k``.

    Parameters
    ----------
    matrix : ndarray of shape (rows, cols)
    settings : Settings
    bias : ndarray of shape (rows,), optional

    Returns
    -------
    matrix : ndarray of shape (rows, cols)
    bias : ndarray of shape (rows,) or None
    sigma : float
        Standard deviation of the weight (and bias) noise, model units: ``noise · limit · k``.

    References
    ----------
    QuantizedLSTM ``model.py`` ``CustomMM_bmm.forward``; methods.md §5.
    """
    if settings.weight_map == "scale":
        peak = float(np.max(np.abs(matrix))) if matrix.size else 0.0
        k, limit = (peak if peak > 0 else 1.0), 1.0
    else:
        k, limit = 1.0, settings.max_w
    held = k * quantize(np.clip(matrix / k, -limit, limit), settings.weight_bits, 1.0)
    if bias is not None:
        bound = settings.rows_bias
        bias = k * quantize(np.clip(bias / k, -bound, bound), settings.weight_bits, 1.0)
    return held, bias, settings.noise * limit * k


class Peaks:
    """Float numerics recording the largest magnitude of every point: the calibrated ranges.

    ``peaks[(layer name, direction index)][point]`` after a run; outputs are the float ones.
    """

    def __init__(self):
        self.peaks = {}

    def direction(self, layer, k):
        return _Recorder(self.peaks.setdefault((layer.name, k), {}))


class _Recorder(Float):
    def __init__(self, peaks):
        self.peaks = peaks

    def point(self, name, value):
        peak = float(np.max(np.abs(value))) if value.size else 0.0
        self.peaks[name] = max(self.peaks.get(name, 0.0), peak)
        return value


class Crossbar:
    """Compute-in-memory numerics for one batch of sequences.

    Parameters
    ----------
    settings : Settings
    peaks : dict
        :attr:`Peaks.peaks` of the float run: each point's clipping range.
    rngs : list of numpy.random.Generator, optional
        One per sequence of the batch, drawing that sequence's weight noise; needed when
        ``settings.noise > 0``.
    """

    def __init__(self, settings, peaks, rngs=None):
        if settings.noise > 0 and rngs is None:
            raise ValueError("weight noise needs one random generator per sequence")
        self.settings, self.peaks, self.rngs = settings, peaks, rngs

    def direction(self, layer, k):
        return _CrossbarDirection(self.settings, self.peaks[(layer.name, k)], self.rngs)


class _CrossbarDirection:
    def __init__(self, settings, peaks, rngs):
        self.settings, self.rngs = settings, rngs
        self.ranges = {name: (settings.adc_clip if name in ADC_POINTS and settings.adc_clip
                              else peak if peak > 0 else 1.0) for name, peak in peaks.items()}

    def operators(self, direction, dtype):
        if not self.settings.programmed:
            return FLOAT.operators(direction, dtype)
        W, b, sigma_w = program(direction.W.materialize(dtype), self.settings, direction.b.astype(dtype))
        R, _, sigma_r = program(direction.R.materialize(dtype), self.settings)
        products = [self._noisy(W, sigma_w), self._noisy(R, sigma_r)]
        b = b + self._draw(b.shape, sigma_w)[:, None, :] if self.settings.noise > 0 else b
        if direction.proj is None:
            return (*products, b, None)
        P, _, sigma_p = program(direction.proj.materialize(dtype), self.settings)
        return (*products, b, self._noisy(P, sigma_p))

    def _draw(self, shape, sigma):
        """Noise of ``shape`` for every sequence: (batch, *shape), each from its own generator."""
        return np.stack([rng.standard_normal(shape) for rng in self.rngs]) * sigma

    def _noisy(self, matrix, sigma):
        """``x -> x (M + E_n)^T`` with ``E_n`` sequence ``n``'s noise, for x (batch, [time,] cols)."""
        transposed = np.ascontiguousarray(matrix.T)
        if self.settings.noise == 0:
            return lambda x: x @ transposed
        noise = self._draw(matrix.shape, sigma).transpose(0, 2, 1)  # (batch, cols, rows)

        def product(x):
            if x.ndim == 2:
                return x @ transposed + np.matmul(x[:, None, :], noise)[:, 0]
            return x @ transposed + np.matmul(x, noise)

        return product

    def point(self, name, value):
        bits = self.settings.bits(name)
        if not bits:
            return value
        a = self.ranges[name]
        return quantize(pact(value, a), bits, a)
