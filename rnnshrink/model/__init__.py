"""The IR: weight objects, layers, the model, and the NumPy reference forward pass.

This package imports nothing else from rnnshrink but its errors and the entropy coder
(:mod:`rnnshrink.coding`, a leaf); every other part imports it.
"""

from .activations import (
    HARD_SIGMOID_KERAS2,
    HARD_SIGMOID_KERAS3,
    SIGMOID,
    TANH,
    Activation,
)
from .coded import EntropyCoded, step_map
from .forward import run_direction, run_layer, run_stack
from .gated import GATES
from .ir import (
    DenseLayer,
    EmbeddingLayer,
    LSTMDirection,
    LSTMLayer,
    Model,
    OtherLayer,
    Tensor,
)
from .weights import DTYPE_BYTES, Dense, Weight, dtype_bytes

__all__ = [
    "Activation",
    "DTYPE_BYTES",
    "Dense",
    "DenseLayer",
    "EmbeddingLayer",
    "EntropyCoded",
    "GATES",
    "HARD_SIGMOID_KERAS2",
    "HARD_SIGMOID_KERAS3",
    "LSTMDirection",
    "LSTMLayer",
    "Model",
    "OtherLayer",
    "SIGMOID",
    "TANH",
    "Tensor",
    "Weight",
    "dtype_bytes",
    "run_direction",
    "run_layer",
    "run_stack",
    "step_map",
]
