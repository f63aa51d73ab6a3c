"""The framework-neutral model: ordered layers, LSTM weights in one canonical gate order.

Canonical conventions (readers convert into them, writers out of them):

* gate order **i, f, g, o** (input, forget, cell candidate, output) along the ``4H`` axis —
  the order of PyTorch and of Keras (which calls g "c"); ONNX's i, o, f, c is converted at the
  edge;
* matrices used as ``W @ x``: input weights ``W`` of shape ``(4H, D)``, recurrent weights ``R``
  of shape ``(4H, P)`` where ``P`` is the projection size (or ``H`` without projection);
* one folded bias ``b`` of shape ``(4H,)`` (PyTorch's ``b_ih + b_hh``, ONNX's ``Wb + Rb``);
* an optional projection ``proj`` of shape ``(P, H)``: ``h_t = proj @ (o_t * act(c_t))``,
  PyTorch's ``weight_hr`` (``proj_size``).

References
----------
Hochreiter & Schmidhuber (1997); Sak, Senior & Beaufays (2014) for the projection layer;
PyTorch ``nn.LSTM`` documentation; ONNX ``LSTM`` operator spec.
"""

from dataclasses import dataclass, field

import dataclasses

import numpy as np

from .activations import SIGMOID, TANH, Activation
from .gated import bias_mask, check_direction, check_fixed_gates
from .weights import Dense, Weight, dtype_bytes


@dataclass
class LSTMDirection:
    """The weights of one direction of an LSTM layer.

    Parameters
    ----------
    W : Weight of shape (4 * hidden, input)
    R : Weight of shape (4 * hidden, out)
        ``out`` is ``proj_size`` when ``proj`` is set, else ``hidden``.
    b : ndarray of shape (4 * hidden,)
        Folded bias, gates i, f, g, o.
    proj : Weight of shape (proj_size, hidden), optional
    bias_terms : int
        How many bias vectors the file stores (1 for Keras, 2 for PyTorch / ONNX / CuDNN),
        for byte and parameter counts.
    bias_dtype : str
        The dtype the file stores the biases in.
    variant : str
        ``"LSTM"``, or a Slim LSTM variant (:data:`rnnshrink.model.gated.VARIANTS`): W and R
        are then :class:`~rnnshrink.model.gated.Gated` with the variant's gate blocks, and only
        the variant's gate biases are parameters (the others are zero or fix a gate).
    """

    W: Weight
    R: Weight
    b: np.ndarray
    proj: Weight = None
    bias_terms: int = 1
    bias_dtype: str = "float32"
    variant: str = "LSTM"

    def __post_init__(self):
        dtype_bytes(self.bias_dtype)  # a dtype rnnshrink can count
        for name in ("W", "R", "proj"):
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                setattr(self, name, Dense(value))
        self.b = np.asarray(self.b)
        if self.b.dtype not in (np.float32, np.float64):
            self.b = self.b.astype(np.float32)
        hidden4, _ = self.W.shape
        if hidden4 % 4:
            raise ValueError(f"input weights must have 4*hidden rows, got {self.W.shape}")
        hidden = hidden4 // 4
        out = self.proj.shape[0] if self.proj is not None else hidden
        if self.R.shape != (4 * hidden, out):
            raise ValueError(f"recurrent weights must be {(4 * hidden, out)}, got {self.R.shape}")
        if self.b.shape != (4 * hidden,):
            raise ValueError(f"bias must be ({4 * hidden},), got {self.b.shape}")
        if self.proj is not None and self.proj.shape[1] != hidden:
            raise ValueError(f"projection must be (P, {hidden}), got {self.proj.shape}")
        check_direction(self)

    @property
    def matrices(self):
        """The weight matrices of this direction by role: ``W``, ``R`` and ``proj`` if any."""
        found = {"W": self.W, "R": self.R}
        if self.proj is not None:
            found["proj"] = self.proj
        return found

    @property
    def bias_params(self):
        """Bias numbers stored: ``bias_terms`` times the variant's parameter entries of b."""
        return self.bias_terms * int(np.count_nonzero(bias_mask(self.variant, self.b.size // 4)))

    @property
    def params(self):
        return sum(m.params for m in self.matrices.values()) + self.bias_params

    @property
    def nbytes(self):
        bias_bytes = self.bias_params * dtype_bytes(self.bias_dtype)
        return sum(m.nbytes for m in self.matrices.values()) + bias_bytes

    @property
    def macs(self):
        return sum(m.macs for m in self.matrices.values())


@dataclass
class LSTMLayer:
    """One LSTM layer: one or two directions (forward, then reverse) sharing sizes and activations.

    Parameters
    ----------
    name : str
        The layer's name in the file (Keras layer name, ``lstm_l0`` style for PyTorch, ONNX node
        name).
    directions : list of LSTMDirection
        ``[forward]`` or ``[forward, reverse]``; a lone reverse LSTM sets ``reverse_only``.
    gate_activation, cell_activation, hidden_activation : Activation
        Keras ``recurrent_activation`` / ``activation`` / ``activation``; ONNX f / g / h.
    clip : float, optional
        ONNX cell clip: gate pre-activations are clipped to ``[-clip, clip]``.
    reverse_only : bool
        A single direction that reads the sequence backwards (ONNX ``direction="reverse"``,
        Keras ``go_backwards``).
    inputs : list of str, optional
        Names of the layers feeding this one; ``None`` when the file does not say.
    source : dict
        Where the weights came from: original tensor names and layout facts a writer needs.
    """

    name: str
    directions: list
    gate_activation: Activation = SIGMOID
    cell_activation: Activation = TANH
    hidden_activation: Activation = TANH
    clip: float = None
    reverse_only: bool = False
    inputs: list = None
    source: dict = field(default_factory=dict)

    kind = "lstm"

    def __post_init__(self):
        if len(self.directions) not in (1, 2):
            raise ValueError(f"an LSTM layer has 1 or 2 directions, got {len(self.directions)}")
        if self.reverse_only and len(self.directions) != 1:
            raise ValueError("reverse_only applies to a single-direction layer")
        first = self.directions[0]
        for other in self.directions[1:]:
            shapes = [(m.W.shape, m.R.shape) for m in (first, other)]
            if shapes[0] != shapes[1]:
                raise ValueError(f"layer {self.name}: directions differ in shape {shapes}")
            if other.variant != first.variant:
                raise ValueError(f"layer {self.name}: directions differ in variant")
        check_fixed_gates(self)

    @property
    def variant(self):
        """The LSTM variant of the layer's directions (``"LSTM"`` for a standard LSTM)."""
        return self.directions[0].variant

    @property
    def input_size(self):
        return self.directions[0].W.shape[1]

    @property
    def hidden_size(self):
        return self.directions[0].W.shape[0] // 4

    @property
    def proj_size(self):
        """Projection size, 0 without projection (PyTorch's convention)."""
        proj = self.directions[0].proj
        return proj.shape[0] if proj is not None else 0

    @property
    def out_size(self):
        """Width of h per direction: the projection size, or the hidden size."""
        return self.proj_size or self.hidden_size

    @property
    def num_directions(self):
        return len(self.directions)

    @property
    def output_size(self):
        """Width of the layer's output sequence (directions concatenated)."""
        return self.num_directions * self.out_size

    @property
    def params(self):
        return sum(d.params for d in self.directions)

    @property
    def nbytes(self):
        return sum(d.nbytes for d in self.directions)

    @property
    def macs_per_step(self):
        """Multiply-adds of one time step: every matrix-vector product, all directions."""
        return sum(d.macs for d in self.directions)


@dataclass
class DenseLayer:
    """A fully connected layer ``y = W x + b`` (Keras Dense, torch Linear, ONNX Gemm/MatMul).

    Parameters
    ----------
    W : Weight of shape (out, in)
    b : ndarray of shape (out,), optional
    """

    name: str
    W: Weight
    b: np.ndarray = None
    bias_dtype: str = "float32"
    activation: Activation = None
    inputs: list = None
    source: dict = field(default_factory=dict)

    kind = "dense"

    @property
    def params(self):
        return self.W.params + (0 if self.b is None else self.b.size)

    @property
    def nbytes(self):
        bias = 0 if self.b is None else self.b.size * dtype_bytes(self.bias_dtype)
        return self.W.nbytes + bias


@dataclass
class EmbeddingLayer:
    """A lookup table feeding token ids to the first LSTM; ``table`` of shape (vocab, dim)."""

    name: str
    table: np.ndarray
    inputs: list = None
    source: dict = field(default_factory=dict)

    kind = "embedding"

    @property
    def params(self):
        return self.table.size

    @property
    def nbytes(self):
        return self.table.nbytes


@dataclass
class OtherLayer:
    """A layer rnnshrink does not model (kept so the chain of layers stays truthful)."""

    name: str
    kind: str
    inputs: list = None
    source: dict = field(default_factory=dict)


@dataclass
class Tensor:
    """A tensor of the file kept byte-exact as a pass-through.

    Parameters
    ----------
    name : str
        Its name in the file.
    data : ndarray
        The stored values; bfloat16 is held as its raw ``uint16`` bits.
    dtype : str
        The dtype as the file names it (``"bfloat16"``, ``"float32"``, ``"int64"``, ...).
    """

    name: str
    data: np.ndarray
    dtype: str = None

    def __post_init__(self):
        if self.dtype is None:
            self.dtype = self.data.dtype.name

    @property
    def nbytes(self):
        return self.data.nbytes


@dataclass
class Model:
    """A checkpoint in memory: its layers in file order and every other tensor.

    Parameters
    ----------
    layers : list
        LSTMLayer, DenseLayer, EmbeddingLayer and OtherLayer objects in the order the file
        lists them (for graphs, topological order).
    tensors : dict of str to Tensor
        Every tensor of the file not owned by a layer above (LSTM, Dense and Embedding layers
        own their weights), byte-exact, by name.
    format : str
        ``"keras-h5"``, ``"keras-zip"``, ``"torch-zip"``, ``"torch-legacy"``, ``"safetensors"``
        or ``"onnx"``.
    producer : str
        Framework and version that wrote the file, where the file says.
    topology : str
        ``"known"`` when the file says which layer feeds which (model config, graph edges),
        ``"partial"`` when only naming conventions say it (PyTorch ``_l{k}``), ``"unknown"``
        for weights-only files.
    notes : list of str
        Facts a user should see in the report (defaults applied, things not known).
    path : str
        The file it was read from.
    """

    layers: list
    tensors: dict = field(default_factory=dict)
    format: str = ""
    producer: str = "unknown"
    topology: str = "unknown"
    notes: list = field(default_factory=list)
    path: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def lstm_layers(self):
        return [layer for layer in self.layers if isinstance(layer, LSTMLayer)]

    def replace(self, **changes):
        """A new Model with ``changes`` applied; layers and tensors not changed are shared."""
        changes.setdefault("tensors", dict(self.tensors))
        changes.setdefault("notes", list(self.notes))
        changes.setdefault("meta", dict(self.meta))
        return dataclasses.replace(self, **changes)

    def replace_layer(self, name, new_layer):
        """A new Model whose layer ``name`` is ``new_layer``."""
        layers = [new_layer if layer.name == name else layer for layer in self.layers]
        return self.replace(layers=layers)

    def layer(self, name):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def consumers(self, name):
        """Layers whose ``inputs`` name ``name``; empty when unknown."""
        return [layer for layer in self.layers if layer.inputs and name in layer.inputs]
