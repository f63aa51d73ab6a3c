"""How much each LSTM weight matters: the ``w_ij`` of a rate allocation ``Σ w_ij (W_ij − Ŵ_ij)²``.

Three kinds, from the weakest (needs least) to the strongest:

* ``rms`` — ``1 / rms(row)²``: every row's error relative to the row's own size; nothing but
  the weight file;
* ``hessian`` — ``E[x_j²]``, the diagonal of the second moment ``H = E[x xᵀ]`` of the vectors
  the matrix reads on the probes (``W``: the layer's inputs; ``R``: the direction's previous
  output ``h_{t-1}``, ``P`` wide with a projection; ``proj``: ``m_t``): the error of each
  matrix's own product, the same ``H`` as GPTQ's (:func:`second_moments`);
* ``fisher`` — the diagonal of the Fisher information of the model's output distribution,
  ``F_ij = E_x E_{y∼p(·|x)} [(∂ log p(y|x) / ∂W_ij)²]``, over probe sequences with labels
  *sampled from the model's own softmax* at every step (the true Fisher, not the empirical one
  on given labels), per-sequence gradients from :mod:`rnnshrink.model.backward`. A small change
  ``δ`` costs ``½ Σ F_ij δ_ij²`` of expected KL divergence, so it ranks weights across matrices
  and layers; it needs a Dense softmax head on the last LSTM of one chain.

Every ``w`` is floored at ``FLOOR`` times its matrix's mean, so all are positive.

References
----------
Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017
(diagonal Fisher as weight importance); Martens, "New insights and perspectives on the natural
gradient method", JMLR 2020, §9 (true vs empirical Fisher); Frantar et al., GPTQ, ICLR 2023
(``H = E[x xᵀ]``); rnnshrink ``methods.md`` §8 (the three sensitivities, tempering ``F^β``).
"""

import numpy as np
from scipy.special import log_softmax, softmax

from .errors import OptionError
from .model.backward import derivative, stack_backward, stack_forward
from .model.network import apply_dense, trace_model
from .probes import chain_problem, sample_categorical, softmax_head
from .transforms.gptq import hessian, lstm_samples, sample_index

KINDS = ("rms", "hessian", "fisher")
DESCRIPTIONS = {
    "rms": "1 / row RMS² of each matrix",
    "hessian": "diagonal of E[x xᵀ] of each matrix's inputs on the probes",
    "fisher": "diagonal Fisher of each weight on the probes, labels sampled from the model",
}
FLOOR = 1e-6
# Memory for one chunk of sequences in the Fisher pass (per-sequence gradients and the tape).
CHUNK_BYTES = 256 * 2 ** 20


def matrices(model):
    """Every LSTM matrix: ``(layer name, direction index, role)`` → Weight, role W, R or proj."""
    return {(layer.name, k, role): weight for layer in model.lstm_layers
            for k, direction in enumerate(layer.directions)
            for role, weight in direction.matrices.items()}


def fisher_problem(model, probes):
    """Why ``fisher`` is not available for ``model`` on ``probes``, or None when it is."""
    if probes is None:
        return "fisher needs probe inputs"
    if softmax_head(model) is None:
        return ("fisher needs a Dense softmax head on the last LSTM layer (the output "
                "distribution labels are sampled from); the model has none")
    problem = chain_problem(model)
    if problem is None and getattr(probes.x, "layer_inputs", None):
        problem = "calibration inputs of later LSTM layers cut the chain"
    if problem is not None:
        return f"fisher backpropagates through one chain of LSTM layers: {problem}"
    try:
        for layer in model.lstm_layers:
            for activation in (layer.gate_activation, layer.cell_activation,
                               layer.hidden_activation):
                derivative(activation, np.zeros(1))
    except OptionError as error:
        return f"fisher: {error} (layer {layer.name})"
    return None


def available_kinds(model, probes=None):
    """The sensitivity kinds ``model`` and ``probes`` allow, weakest first (tuple of str)."""
    if probes is None:
        return ("rms",)
    return ("rms", "hessian") + (("fisher",) if fisher_problem(model, probes) is None else ())


def strongest(model, probes=None):
    """``"fisher"`` where possible, else ``"hessian"`` (probes given), else ``"rms"``."""
    return available_kinds(model, probes)[-1]


def sensitivities(model, kind, probes=None, seed=0):
    """The sensitivity ``w`` of every LSTM weight.

    Parameters
    ----------
    model : Model
    kind : {"rms", "hessian", "fisher"}
    probes : Probes, optional
        Needed by ``hessian`` and ``fisher`` (:func:`rnnshrink.probes.self_probes`, or
        ``Probes(x, description)`` around the user's inputs).
    seed : int
        Seeds the labels ``fisher`` samples and the (sequence, time) subset ``hessian`` uses
        beyond ``gptq.MAX_SAMPLES`` samples.

    Returns
    -------
    dict of tuple to ndarray of float64
        ``(layer name, direction index, role)`` → ``w`` of the matrix's shape, positive, for
        every matrix of :func:`matrices` (role ``W``, ``R``, or ``proj`` of a projection);
        ``rms`` and ``hessian`` give read-only broadcast views of a column / row vector.

    Raises
    ------
    OptionError
        An unknown kind, or one the model or probes do not allow (the message says why).
    """
    if kind not in KINDS:
        raise OptionError(f"sensitivity must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind != "rms" and probes is None:
        raise OptionError(f"sensitivity {kind} needs probe inputs")
    if kind == "rms":
        return {key: np.broadcast_to(1.0 / floored(np.mean(w.materialize() ** 2, axis=1))[:, None],
                                     w.shape) for key, w in matrices(model).items()}
    if kind == "hessian":
        shapes = {key: w.shape for key, w in matrices(model).items()}
        return {key: np.broadcast_to(floored(np.mean(samples ** 2, axis=0))[None, :], shapes[key])
                for key, samples in _samples(model, probes, seed)}
    problem = fisher_problem(model, probes)
    if problem is not None:
        raise OptionError(problem)
    return {key: floored(value) for key, value in fisher(model, probes.x, seed).items()}


def second_moments(model, probes, seed=0):
    """GPTQ's ``H = E[x xᵀ]`` of every LSTM matrix's inputs on ``probes``.

    The same samples as the ``hessian`` sensitivity (whose ``w`` is ``diag H``, floored) and
    as ``quant:method=gptq`` with ``seed``.

    Returns
    -------
    dict of tuple to ndarray of float64, shape (cols, cols)
    """
    return {key: hessian(samples) for key, samples in _samples(model, probes, seed)}


def fisher(model, x, seed=0):
    """Diagonal Fisher of every LSTM matrix: the mean over sequences of the squared gradient of
    each sequence's log-likelihood ``Σ_t log p(y_t | x_≤t)``, ``y_t`` drawn from the model.

    Parameters
    ----------
    model : Model
        Its LSTM layers form one chain with a softmax head (:func:`fisher_problem`).
    x : ndarray of shape (N, T, D)
        Inputs of the first LSTM layer.
    seed : int
        Seeds the labels.

    Returns
    -------
    dict of tuple to ndarray of float64 (not floored)
    """
    layers, head = model.lstm_layers, softmax_head(model)
    x = np.asarray(x, dtype=np.float64)
    count, steps, _ = x.shape
    keys = matrices(model)
    per_sequence = 8 * (sum(w.params for w in keys.values()) + head.W.params + steps * sum(
        layer.num_directions * (16 * layer.hidden_size + layer.input_size) for layer in layers))
    chunk = max(1, CHUNK_BYTES // per_sequence)
    rng = np.random.default_rng(seed)
    sums = {key: np.zeros(w.shape) for key, w in keys.items()}
    for start in range(0, count, chunk):
        tape = stack_forward(layers, x[start:start + chunk], head)
        labels = sample_categorical(softmax(tape.logits, axis=-1), rng)
        grads, _ = stack_backward(tape, labels)
        for key, total in sums.items():
            total += np.einsum("nij,nij->ij", grads[key], grads[key])
    return {key: total / count for key, total in sums.items()}


def temper(weights, beta):
    """``w^β``, scaled so its mean over every weight of every matrix is 1.

    One scale for the whole model, not one per matrix: the allocation trades bits between
    matrices with one λ, so the ratio of two matrices' sensitivities is information (for the
    Fisher, how much more one layer's error costs than another's) that a per-matrix
    normalisation would erase. The global scale only moves λ, to a similar range for any β.

    Parameters
    ----------
    weights : dict of tuple to ndarray
        From :func:`sensitivities`.
    beta : float
        0 gives every weight the same sensitivity; 1 keeps them.

    Returns
    -------
    dict of tuple to ndarray of float64 (broadcast views stay broadcast)
    """
    powered = {key: np.broadcast_to(_compact(w) ** beta, w.shape) for key, w in weights.items()}
    total = sum(_compact(w).mean() * w.size for w in powered.values())
    scale = sum(w.size for w in powered.values()) / total
    return {key: np.broadcast_to(_compact(w) * scale, w.shape) for key, w in powered.items()}


def output_kl(original, compressed, probes, reference=None):
    """Mean KL divergence ``KL(p ‖ p̂)`` in nats per step between the two models' output
    distributions (their softmax heads) on ``probes``: what a choice of β is judged by on
    held-out probes. Models without a softmax head can use
    :func:`rnnshrink.fidelity.compare`'s relative error instead.

    Parameters
    ----------
    original, compressed : Model
    probes : Probes
    reference : ndarray, optional
        ``head_log_probs(original, probes)``, when already computed (comparing many models).

    Raises
    ------
    OptionError
        A model without a softmax head.
    """
    log_p = head_log_probs(original, probes) if reference is None else reference
    log_q = head_log_probs(compressed, probes)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))


def head_log_probs(model, probes):
    """Log-probabilities of ``model``'s softmax head on ``probes``, shape (N, T, classes).

    Raises
    ------
    OptionError
        A model without a softmax head.
    """
    head = softmax_head(model)
    if head is None:
        raise OptionError("output KL needs a Dense softmax head on the last LSTM layer")
    y = trace_model(model, probes.x)[model.lstm_layers[-1].name][1]
    return log_softmax(apply_dense(head, y), axis=-1)


def _samples(model, probes, seed):
    """``(key, samples (n, cols) of the inputs the matrix reads)`` for every LSTM matrix, in
    :func:`matrices` order, as ``quant:method=gptq`` samples them."""
    trace = trace_model(model, probes.x, seed)
    for layer in model.lstm_layers:
        inputs, y = trace[layer.name][:2]
        index = sample_index(*inputs.shape[:2], seed=seed)
        for k, found in enumerate(lstm_samples(layer, inputs, y, index)):
            for role in layer.directions[k].matrices:
                yield (layer.name, k, role), found[role]


def floored(values):
    """``values`` raised to at least ``FLOOR`` times their mean (ones if they are all zero)."""
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean()
    return np.maximum(values, FLOOR * mean) if mean > 0 else np.ones_like(values)


def _compact(w):
    """The smallest array ``w`` is a broadcast of (length 1 along its zero-stride axes)."""
    return w[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in w.strides)]
