"""Gate-structured matrices, and the Slim LSTM variants expressed as standard LSTMs.

Akandeh & Salem's Slim LSTMs keep the cell candidate ``c̃ = act(W_c x + U_c h + b_c)`` and
give the gates i, f, o fewer parameters. Every variant is a standard LSTM (the equations of
:mod:`rnnshrink.model.forward`) whose weights have structure:

* ``W``: the gate blocks i, f, o are zero, only the cell block ``W_c`` is kept;
* ``R``: each gate block is full (``U_g h``), diagonal (``u_g ⊙ h``) or zero;
* ``b``: each gate's bias is a parameter, absent (zero), or *fixed*: a gate held at a constant
  ``γ`` has a zero pre-activation plus the bias ``act⁻¹(γ)`` (:func:`fixed_bias`), so
  ``act(z_g) = γ`` exactly as the paper's ``f = 0.96``.

A :class:`Gated` matrix stores only its full blocks and diagonals; a direction's ``variant``
(:data:`VARIANTS`) says which entries of ``b`` are parameters. So the counts of
``rnnshrink report`` are the paper's (n units, m inputs, one bias vector):

=========  ===================================  =================
variant    gates i, f, o                        parameters
=========  ===================================  =================
LSTM       W_g x + U_g h + b_g                  4(nm + n² + n)
LSTM1      U_g h + b_g                          nm + 4n² + 4n
LSTM2      U_g h                                nm + 4n² + n
LSTM3      b_g                                  nm + n² + 4n
LSTM4      u_g ⊙ h                              nm + n² + 4n
LSTM5      u_g ⊙ h + b_g                        nm + n² + 7n
LSTM4a     i: u_i ⊙ h; f = 0.96, o = 1          nm + n² + 2n
LSTM5a     i: u_i ⊙ h + b_i; f = 0.96, o = 1    nm + n² + 3n
LSTM6      i = 1, f = 0.4, o = 1                nm + n² + n
LSTM10     as LSTM4, cell u_c ⊙ h               nm + 5n
LSTM11     as LSTM5, cell u_c ⊙ h               nm + 8n
=========  ===================================  =================

References
----------
Akandeh & Salem, "Simplified Long Short-term Memory Recurrent Neural Networks: part I / II",
arXiv 1707.04619, 1707.04623; their Keras code ``slim22.py`` (``LSTMCell1`` ... ``LSTMCell11``,
the constants 0.96, 0.4, 1.0); rnnshrink ``methods.md`` §6.
"""

from collections import namedtuple

import numpy as np
from scipy.special import logit

from ..errors import OptionError
from .weights import Dense, Weight, dtype_bytes, round_to_stored

GATES = ("i", "f", "g", "o")
BLOCKS = ("full", "diag", "zero")

# Per gate i, f, g, o: the terms of its pre-activation (Wx: input weights, Uh: full recurrent
# block, uh: diagonal recurrent block, b: a bias parameter), or the constant the gate is fixed at.
_TERMS = {
    "LSTM": ("Wx+Uh+b", "Wx+Uh+b", "Wx+Uh+b", "Wx+Uh+b"),
    "LSTM1": ("Uh+b", "Uh+b", "Wx+Uh+b", "Uh+b"),
    "LSTM2": ("Uh", "Uh", "Wx+Uh+b", "Uh"),
    "LSTM3": ("b", "b", "Wx+Uh+b", "b"),
    "LSTM4": ("uh", "uh", "Wx+Uh+b", "uh"),
    "LSTM5": ("uh+b", "uh+b", "Wx+Uh+b", "uh+b"),
    "LSTM4a": ("uh", 0.96, "Wx+Uh+b", 1.0),
    "LSTM5a": ("uh+b", 0.96, "Wx+Uh+b", 1.0),
    "LSTM6": (1.0, 0.4, "Wx+Uh+b", 1.0),
    "LSTM10": ("uh", "uh", "Wx+uh+b", "uh"),
    "LSTM11": ("uh+b", "uh+b", "Wx+uh+b", "uh+b"),
}

GateSpec = namedtuple("GateSpec", "input recurrent bias fixed")
GateSpec.__doc__ = """How one gate of a variant computes its pre-activation.

input : bool (reads ``W_g x``); recurrent : one of :data:`BLOCKS`; bias : bool (a parameter);
fixed : float or None (the constant the gate is held at; then nothing else is read).
"""


def _spec(terms):
    if not isinstance(terms, str):
        return GateSpec(False, "zero", False, float(terms))
    parts = terms.split("+")
    recurrent = "full" if "Uh" in parts else "diag" if "uh" in parts else "zero"
    return GateSpec("Wx" in parts, recurrent, "b" in parts, None)


VARIANTS = {name: tuple(_spec(t) for t in terms) for name, terms in _TERMS.items()}
SLIM_VARIANTS = tuple(name for name in VARIANTS if name != "LSTM")


def variant_specs(name):
    """The four :class:`GateSpec` (i, f, g, o) of variant ``name``; ValueError if unknown."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown LSTM variant {name!r}; known: {', '.join(VARIANTS)}") from None


def bias_mask(name, hidden):
    """Which entries of the folded bias (4H,) are parameters of variant ``name``; bool (4H,)."""
    return np.repeat([spec.bias for spec in variant_specs(name)], hidden)


def fixed_bias(activation, value):
    """The pre-activation ``b`` with ``activation(b) == value``: how a gate is fixed.

    Parameters
    ----------
    activation : Activation
        The layer's gate activation: sigmoid or hard_sigmoid.
    value : float in (0, 1]

    Returns
    -------
    float
        ``logit(value)`` for sigmoid (40 for 1: ``sigmoid(40)`` is 1.0 in float32 and float64);
        ``(value - beta) / alpha`` for hard_sigmoid, twice the saturation point for 1.

    Raises
    ------
    OptionError
        Another gate activation.
    """
    if activation.name == "sigmoid":
        return 40.0 if value == 1 else float(logit(value))
    if activation.name == "hard_sigmoid":
        return (2.0 if value == 1 else 1.0) * (value - activation.beta) / activation.alpha
    raise OptionError(f"a gate fixed at {value} needs a sigmoid or hard_sigmoid gate "
                      f"activation, got {activation.describe()}")


def expand_bias(name, activation, params, hidden):
    """The folded bias (4H,) of variant ``name`` from its parameter entries.

    Parameters
    ----------
    name : str
    activation : Activation
        The gate activation, for the biases that fix gates (:func:`fixed_bias`).
    params : ndarray of shape (k * H,)
        The entries :func:`bias_mask` selects (k = the gates with a bias parameter).
    hidden : int

    Returns
    -------
    ndarray of shape (4H,), dtype of ``params``
        ``params`` where the variant has bias parameters, the fixing bias of fixed gates,
        zeros elsewhere.
    """
    params = np.asarray(params)
    b = np.zeros(4 * hidden, params.dtype)
    b[bias_mask(name, hidden)] = params
    for k, spec in enumerate(variant_specs(name)):
        if spec.fixed is not None:
            b[k * hidden:(k + 1) * hidden] = fixed_bias(activation, spec.fixed)
    return b


def check_direction(direction):
    """ValueError unless ``direction``'s W, R and b have its variant's structure."""
    specs = variant_specs(direction.variant)
    if direction.variant == "LSTM":
        return
    wanted = {"W": tuple("full" if s.input else "zero" for s in specs),
              "R": tuple(s.recurrent for s in specs)}
    for role, structure in wanted.items():
        weight = getattr(direction, role)
        if not isinstance(weight, Gated) or weight.structure != structure:
            found = weight.structure if isinstance(weight, Gated) else weight.kind
            raise ValueError(f"variant {direction.variant} needs {role} with gate blocks "
                             f"{'/'.join(structure)}, got {found}")
    if direction.proj is not None:
        raise ValueError(f"variant {direction.variant} has no projection")
    hidden = direction.b.size // 4
    free = np.repeat([s.bias or s.fixed is not None for s in specs], hidden)
    if np.any(direction.b[~free]):
        raise ValueError(f"variant {direction.variant}: gates without a bias must have b = 0")


def check_fixed_gates(layer):
    """ValueError unless every fixed gate of ``layer`` has the bias that holds its constant."""
    hidden = layer.hidden_size
    for direction in layer.directions:
        for k, spec in enumerate(variant_specs(direction.variant)):
            if spec.fixed is None:
                continue
            wanted = np.asarray(fixed_bias(layer.gate_activation, spec.fixed), direction.b.dtype)
            if np.any(direction.b[k * hidden:(k + 1) * hidden] != wanted):
                raise ValueError(f"layer {layer.name} ({direction.variant}): gate {GATES[k]} "
                                 f"is fixed at {spec.fixed}, so its bias must be {wanted}")


class Gated(Weight):
    """A (4H, cols) matrix of four gate blocks (i, f, g, o), each full, diagonal or zero.

    Only the full blocks and the diagonals are stored and counted.

    Parameters
    ----------
    blocks : sequence of 4
        Per gate: a Weight (or ndarray) of shape (H, cols) for a full block, an ndarray of
        shape (H,) for a diagonal block ``diag(u)`` (needs ``cols == H``), or None for zeros.
    shape : tuple of int
        ``(4H, cols)``.
    diag_dtype : str
        Dtype the diagonals are stored in; they are rounded to it.

    References
    ----------
    Akandeh & Salem (arXiv 1707.04619): ``u_g ⊙ h`` is ``diag(u_g) h``.
    """

    kind = "gated"

    def __init__(self, blocks, shape, diag_dtype="float32"):
        rows, cols = shape
        if len(blocks) != 4 or rows % 4:
            raise ValueError(f"a gated matrix has 4 gate blocks and 4H rows, got {len(blocks)} "
                             f"blocks for shape {shape}")
        hidden = rows // 4
        found = []
        for gate, block in zip(GATES, blocks):
            if isinstance(block, np.ndarray) and block.ndim == 2:
                block = Dense(block)
            if isinstance(block, Weight) and block.shape != (hidden, cols):
                raise ValueError(f"gate {gate}: block {block.shape} is not {(hidden, cols)}")
            if isinstance(block, np.ndarray):
                if block.shape != (hidden,) or cols != hidden:
                    raise ValueError(f"gate {gate}: a diagonal needs shape ({hidden},) and a "
                                     f"square block, got {block.shape} for {cols} columns")
                block = round_to_stored(block, diag_dtype)
            found.append(block)
        self.blocks, self._shape, self.diag_dtype = tuple(found), (rows, cols), diag_dtype

    @property
    def structure(self):
        """Per gate ``"full"``, ``"diag"`` or ``"zero"``."""
        return tuple("zero" if b is None else "full" if isinstance(b, Weight) else "diag"
                     for b in self.blocks)

    def _parts(self, kind):
        return [(k, b) for k, (b, s) in enumerate(zip(self.blocks, self.structure)) if s == kind]

    @property
    def shape(self):
        return self._shape

    def materialize(self, dtype=np.float64):
        hidden = self._shape[0] // 4
        dense = np.zeros(self._shape, dtype)
        for k, block in self._parts("full"):
            dense[k * hidden:(k + 1) * hidden] = block.materialize(dtype)
        units = np.arange(hidden)
        for k, u in self._parts("diag"):
            dense[k * hidden + units, units] = u
        return dense

    @property
    def nbytes(self):
        full = sum(b.nbytes for _, b in self._parts("full"))
        return full + sum(u.size for _, u in self._parts("diag")) * dtype_bytes(self.diag_dtype)

    @property
    def params(self):
        return sum(b.params for _, b in self._parts("full")) + \
            sum(u.size for _, u in self._parts("diag"))

    @property
    def macs(self):
        return sum(b.macs for _, b in self._parts("full")) + \
            sum(u.size for _, u in self._parts("diag"))

    def operator(self, dtype=np.float64):
        hidden = self._shape[0] // 4
        full = [(k, b.operator(dtype)) for k, b in self._parts("full")]
        diag = [(k, u.astype(dtype)) for k, u in self._parts("diag")]

        def apply(x):
            out = np.zeros(x.shape[:-1] + (self._shape[0],), np.result_type(x, dtype))
            for k, product in full:
                out[..., k * hidden:(k + 1) * hidden] = product(x)
            for k, u in diag:
                out[..., k * hidden:(k + 1) * hidden] = x * u
            return out
        return apply

    def describe(self):
        blocks = {gate: b.describe() if isinstance(b, Weight) else s
                  for gate, b, s in zip(GATES, self.blocks, self.structure)}
        found = {**super().describe(), "blocks": blocks}
        if "diag" in self.structure:
            found["dtype"] = self.diag_dtype
        return found
