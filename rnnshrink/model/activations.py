"""Pointwise activations an LSTM may use, with their parameters.

One parametrised object covers every framework's spelling. In particular the two
``hard_sigmoid`` forms are the same function ``clip(alpha * x + beta, 0, 1)`` with different
constants: Keras 2 uses alpha = 0.2 (``0.2 x + 0.5``), Keras 3 uses alpha = 1/6
(``relu6(x + 3) / 6``), ONNX ``HardSigmoid`` defaults to alpha = 0.2, beta = 0.5.

References
----------
ONNX operator spec, ``LSTM`` ("activations", "activation_alpha", "activation_beta").
"""

from dataclasses import dataclass
from numbers import Real

import numpy as np
from scipy.special import expit

from ..errors import OptionError


def _hard_sigmoid(x, alpha, beta):
    return np.clip(alpha * x + beta, 0.0, 1.0)


def _leaky_relu(x, alpha, beta):
    return np.where(x >= 0, x, alpha * x)


def _elu(x, alpha, beta):
    return np.where(x >= 0, x, alpha * np.expm1(np.minimum(x, 0)))


# name -> (function(x, alpha, beta), default alpha, default beta)
_FUNCTIONS = {
    "sigmoid": (lambda x, a, b: expit(x), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "relu": (lambda x, a, b: np.maximum(x, 0.0), None, None),
    "hard_sigmoid": (_hard_sigmoid, 0.2, 0.5),
    "linear": (lambda x, a, b: x, None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "scaled_tanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "leaky_relu": (_leaky_relu, 0.01, None),
    "thresholded_relu": (lambda x, a, b: np.where(x > a, x, 0.0), 1.0, None),
    "elu": (_elu, 1.0, None),
    "softsign": (lambda x, a, b: x / (1.0 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(0.0, x), None, None),
}

SUPPORTED = tuple(_FUNCTIONS)


@dataclass(frozen=True)
class Activation:
    """An activation function by canonical name, with its alpha / beta where it has them.

    Parameters
    ----------
    name : str
        One of :data:`SUPPORTED`.
    alpha, beta : float or None
        Parameters; ``None`` takes the function's default (e.g. 0.2 / 0.5 for hard_sigmoid).
    """

    name: str
    alpha: float = None
    beta: float = None

    def __post_init__(self):
        if self.name not in _FUNCTIONS:
            raise OptionError(
                f"unsupported activation {self.name!r}; supported: {', '.join(SUPPORTED)}"
            )
        for value in (self.alpha, self.beta):
            if value is not None and (isinstance(value, bool) or not isinstance(value, Real)):
                raise OptionError(f"activation {self.name}: alpha and beta must be numbers, "
                                  f"got {value!r}")
        _, alpha, beta = _FUNCTIONS[self.name]
        if self.alpha is None and alpha is not None:
            object.__setattr__(self, "alpha", alpha)
        if self.beta is None and beta is not None:
            object.__setattr__(self, "beta", beta)

    def __call__(self, x):
        function = _FUNCTIONS[self.name][0]
        return function(x, self.alpha, self.beta)

    def describe(self):
        """Short human-readable form, e.g. ``hard_sigmoid(0.2x+0.5)``."""
        if self.name == "hard_sigmoid":
            return f"hard_sigmoid({self.alpha:.4g}x+{self.beta:.4g})"
        if self.alpha is None and self.beta is None:
            return self.name
        parameters = [f"{v:.4g}" for v in (self.alpha, self.beta) if v is not None]
        return f"{self.name}({','.join(parameters)})"

    def to_dict(self):
        return {"name": self.name, "alpha": self.alpha, "beta": self.beta}


SIGMOID = Activation("sigmoid")
TANH = Activation("tanh")
HARD_SIGMOID_KERAS2 = Activation("hard_sigmoid", 0.2, 0.5)
HARD_SIGMOID_KERAS3 = Activation("hard_sigmoid", 1.0 / 6.0, 0.5)
