"""onnxruntime latency of the dense ONNX ``LSTM`` op against compact exports of the same stack.

Not a test: run by hand, prints a table (markdown). A 2-layer, 1024-unit LSTM (input 256) with
random weights whose recurrent matrices have a decaying singular spectrum
(``s_k = 2 exp(-k / 150)``, so rank 128 keeps ~82 % of the energy), exported as:

* ``dense``: the ONNX ``LSTM`` op (``style="auto"``);
* ``svd``: rank-128 projections built by hand (CLSTM / PyTorch ``proj_size``):
  ``proj = S_r V_rᵀ (128 x 1024)``, ``R = U_r (4096 x 128)``, layer 2's ``W`` refit to
  ``(4096 x 128)`` by least squares; Scan graph;
* ``4bit``: W and R as 4-bit codes with a float16 step per group of 64 columns, Scan graph
  (and ``4bit folded``: the same weights rebuilt into the ``LSTM`` op);
* ``svd+4bit``: every matrix of ``svd`` at 4 bits, groups of 64.

Each is timed with 1 and 2 intra-op threads at batch 1 and 16, T = 200: median of repeated
runs after a warm-up, the exports interleaved; "smaller" and "faster" are ratios to the dense
LSTM op measured in the same run. The last column is the largest difference of ``Y`` from
:func:`rnnshrink.model.run_stack` (batch 1, float64).

    python bench/bench_onnx_speed.py [--steps 200] [--repeats 5]
"""

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnshrink.io.onnx_export import export_stack
from rnnshrink.model import Dense, LSTMDirection, LSTMLayer, Model, run_stack
from rnnshrink.transforms.quant import quantize_matrix

HIDDEN, INPUT, RANK, GROUP = 1024, 256, 128, 64


def orthonormal(rows, cols, rng):
    return np.linalg.qr(rng.normal(size=(rows, cols)))[0]


def decaying(rows, cols, rng):
    """A (rows, cols) matrix with singular values ``2 exp(-k / 150)``, and its factors."""
    k = min(rows, cols)
    U, V = orthonormal(rows, k, rng), orthonormal(cols, k, rng)
    s = 2.0 * np.exp(-np.arange(k) / 150.0)
    return U * s @ V.T, (U, s, V.T)


def models(rng):
    """The dense model, and the svd model built from the factors of its recurrent matrices."""
    dense, svd = [], []
    W = rng.normal(0, INPUT ** -0.5, (4 * HIDDEN, INPUT))
    refit = None  # maps the new (RANK-wide) input of a layer to the old one
    for name in ("lstm_0", "lstm_1"):
        R, (U, s, Vt) = decaying(4 * HIDDEN, HIDDEN, rng)
        b = rng.normal(0, 0.1, 4 * HIDDEN)
        dense.append(LSTMLayer(name, [LSTMDirection(W=Dense(W.astype(np.float32)),
                                                    R=Dense(R.astype(np.float32)), b=b)]))
        proj = s[:RANK, None] * Vt[:RANK]
        new_W = W if refit is None else W @ refit
        svd.append(LSTMLayer(name, [LSTMDirection(
            W=Dense(new_W.astype(np.float32)), R=Dense(U[:, :RANK].astype(np.float32)), b=b,
            proj=Dense(proj.astype(np.float32)))]))
        refit = np.linalg.pinv(proj)  # least squares: W_new proj ≈ W
        W = decaying(4 * HIDDEN, HIDDEN, rng)[0]
    return Model(layers=dense), Model(layers=svd)


def four_bit(model):
    """Every matrix of ``model`` as 4-bit codes, a float16 step per group of 64 columns."""
    layers = [dataclasses.replace(layer, directions=[
        dataclasses.replace(d, **{role: quantize_matrix(w.materialize(), 4, "group", GROUP)
                                  for role, w in d.matrices.items()})
        for d in layer.directions]) for layer in model.lstm_layers]
    return model.replace(layers=layers)


def session(path, threads):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timings(runners, x, repeats):
    """Median seconds per run of each runner, interleaved round by round so that a change in
    machine load hits every export alike (after one warm-up run each)."""
    times = {name: [] for name in runners}
    for name, runner in runners.items():
        runner.run(["Y"], {"X": x})
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.run(["Y"], {"X": x})
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(found)) for name, found in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="sequence length T")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    dense, svd = models(rng)
    exports = {"dense": (dense, "auto"), "svd": (svd, "scan"), "4bit": (four_bit(dense), "scan"),
               "4bit folded": (four_bit(dense), "folded"), "svd+4bit": (four_bit(svd), "scan")}
    x = {batch: rng.normal(0, 1, (args.steps, batch, INPUT)).astype(np.float32)
         for batch in (1, 16)}
    with tempfile.TemporaryDirectory() as folder:
        paths, sizes, errors = {}, {}, {}
        for name, (model, style) in exports.items():
            paths[name] = Path(folder) / f"{name.replace(' ', '_')}.onnx"
            export_stack(model, paths[name], style=style)
            sizes[name] = paths[name].stat().st_size
            want = run_stack(model.lstm_layers, x[1].transpose(1, 0, 2))[-1][0]
            got = session(paths[name], 1).run(["Y"], {"X": x[1]})[0]
            errors[name] = np.abs(got - want.transpose(1, 0, 2)).max()
        print(f"2-layer LSTM, hidden {HIDDEN}, input {INPUT}, T = {args.steps}, onnxruntime "
              f"{ort.__version__}, median of {args.repeats} interleaved runs\n")
        print("| export | file MB | smaller | threads | batch | ms | faster | max abs diff |")
        print("|---|---|---|---|---|---|---|---|")
        for threads in (1, 2):
            for batch in (1, 16):
                runners = {name: session(path, threads) for name, path in paths.items()}
                seconds = timings(runners, x[batch], args.repeats)
                for name in exports:
                    print(f"| {name} | {sizes[name] / 1e6:.2f} | "
                          f"{sizes['dense'] / sizes[name]:.2f}x | {threads} | {batch} | "
                          f"{seconds[name] * 1e3:.1f} | {seconds['dense'] / seconds[name]:.2f}x | "
                          f"{errors[name]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
