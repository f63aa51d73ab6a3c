"""Helpers the benchmark scripts share: paths, the synthetic big LSTM, bits per character,
onnxruntime sessions, interleaved latency timing, and writing results.

Bench-only (not part of the library): scripts in ``bench/`` import it as ``_common``.
"""

import json
import time
from pathlib import Path

import numpy as np

from rnnshrink.model import Dense, LSTMDirection, LSTMLayer, Model

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"

SYNTHETIC_HIDDEN, SYNTHETIC_INPUT = 1024, 256


def orthonormal(rows, cols, rng):
    """A (rows, cols) matrix with orthonormal columns."""
    return np.linalg.qr(rng.normal(size=(rows, cols)))[0]


def decaying(rows, cols, rng):
    """A (rows, cols) matrix with singular values ``2 exp(-k / 150)``, and its factors."""
    k = min(rows, cols)
    U, V = orthonormal(rows, k, rng), orthonormal(cols, k, rng)
    s = 2.0 * np.exp(-np.arange(k) / 150.0)
    return U * s @ V.T, (U, s, V.T)


def synthetic_stack(rng, layers=2, hidden=SYNTHETIC_HIDDEN, inputs=SYNTHETIC_INPUT):
    """A dense LSTM stack with random weights: layer 0's ``W`` Gaussian (std ``inputs**-0.5``),
    every other matrix with the decaying spectrum of :func:`decaying` (so rank 128 keeps ~82 %
    of the energy), biases N(0, 0.1). Float32 weights, layers ``lstm_0``, ``lstm_1``, ...

    Returns
    -------
    Model
        The stack alone; ``W`` of layer k > 0 is (4 * hidden, hidden).
    """
    found = []
    W = rng.normal(0, inputs ** -0.5, (4 * hidden, inputs))
    for index in range(layers):
        R = decaying(4 * hidden, hidden, rng)[0]
        b = rng.normal(0, 0.1, 4 * hidden)
        found.append(LSTMLayer(f"lstm_{index}", [LSTMDirection(
            W=Dense(W.astype(np.float32)), R=Dense(R.astype(np.float32)), b=b)]))
        W = decaying(4 * hidden, hidden, rng)[0]
    return Model(layers=found)


def bits_per_char(logits, targets):
    """Mean cross-entropy in bits of ``targets`` under ``logits``.

    Parameters
    ----------
    logits : ndarray of shape (..., vocab)
    targets : int ndarray of shape (...)
    """
    logits = np.asarray(logits, np.float64)
    logits = logits - logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_probs, np.asarray(targets)[..., None], axis=-1)
    return float(-picked.mean() / np.log(2))


def windows(tokens, steps):
    """``tokens`` cut into (inputs, targets), each of shape (n, steps), targets shifted by one."""
    usable = (len(tokens) - 1) // steps * steps
    return tokens[:usable].reshape(-1, steps), tokens[1:usable + 1].reshape(-1, steps)


def ort_session(path, threads=1):
    """An onnxruntime CPU session with all graph optimizations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_timings(runners, repeats):
    """Median seconds per call of each zero-argument callable in ``runners`` (a dict).

    After one warm-up call each, the runners are called round by round, so that a change in
    machine load hits every one alike.
    """
    times = {name: [] for name in runners}
    for runner in runners.values():
        runner()
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(found)) for name, found in times.items()}


def write_json(data, path):
    """Write ``data`` as indented JSON to ``path`` (its folder made if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
