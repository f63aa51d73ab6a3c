"""onnxruntime latency of the dense ONNX ``LSTM`` op against compact exports of the same stack.

Not a test: run by hand, prints a table (markdown). A 2-layer, 1024-unit LSTM (input 256) with
random weights whose recurrent matrices have a decaying singular spectrum
(``s_k = 2 exp(-k / 150)``, so rank 128 keeps ~82 % of the energy; :func:`_common.synthetic_stack`,
the peer benchmark's ``lstm1024``), exported as:

* ``dense``: the ONNX ``LSTM`` op (``style="auto"``);
* ``svd``: rank-128 projections built by hand from the SVD of each R (CLSTM / ``proj_size``):
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
from pathlib import Path

import numpy as np
import onnxruntime as ort

from _common import (SYNTHETIC_HIDDEN, SYNTHETIC_INPUT, interleaved_timings, ort_session,
                     synthetic_stack)
from rnnshrink.io.onnx_export import export_stack
from rnnshrink.model import Dense, LSTMDirection, LSTMLayer, Model, run_stack
from rnnshrink.transforms.quant import quantize_matrix

HIDDEN, INPUT, RANK, GROUP = SYNTHETIC_HIDDEN, SYNTHETIC_INPUT, 128, 64


def models(rng):
    """The dense model (:func:`_common.synthetic_stack`), and the svd model built from the
    rank-RANK SVD of its recurrent matrices."""
    dense = synthetic_stack(rng)
    svd = []
    refit = None  # maps the new (RANK-wide) input of a layer to the old one
    for layer in dense.lstm_layers:
        (direction,) = layer.directions
        W, R = (m.materialize().astype(np.float64) for m in (direction.W, direction.R))
        U, s, Vt = np.linalg.svd(R, full_matrices=False)
        proj = s[:RANK, None] * Vt[:RANK]
        new_W = W if refit is None else W @ refit
        svd.append(LSTMLayer(layer.name, [LSTMDirection(
            W=Dense(new_W.astype(np.float32)), R=Dense(U[:, :RANK].astype(np.float32)),
            b=direction.b, proj=Dense(proj.astype(np.float32)))]))
        refit = np.linalg.pinv(proj)  # least squares: W_new proj ≈ W
    return dense, Model(layers=svd)


def four_bit(model):
    """Every matrix of ``model`` as 4-bit codes, a float16 step per group of 64 columns."""
    layers = [dataclasses.replace(layer, directions=[
        dataclasses.replace(d, **{role: quantize_matrix(w.materialize(), 4, "group", GROUP)
                                  for role, w in d.matrices.items()})
        for d in layer.directions]) for layer in model.lstm_layers]
    return model.replace(layers=layers)


def _runner(session, x):
    return lambda: session.run(["Y"], {"X": x})


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
            got = ort_session(paths[name], 1).run(["Y"], {"X": x[1]})[0]
            errors[name] = np.abs(got - want.transpose(1, 0, 2)).max()
        print(f"2-layer LSTM, hidden {HIDDEN}, input {INPUT}, T = {args.steps}, onnxruntime "
              f"{ort.__version__}, median of {args.repeats} interleaved runs\n")
        print("| export | file MB | smaller | threads | batch | ms | faster | max abs diff |")
        print("|---|---|---|---|---|---|---|---|")
        for threads in (1, 2):
            for batch in (1, 16):
                sessions = {name: ort_session(path, threads) for name, path in paths.items()}
                seconds = interleaved_timings(
                    {name: _runner(session, x[batch]) for name, session in sessions.items()},
                    args.repeats)
                for name in exports:
                    print(f"| {name} | {sizes[name] / 1e6:.2f} | "
                          f"{sizes['dense'] / sizes[name]:.2f}x | {threads} | {batch} | "
                          f"{seconds[name] * 1e3:.1f} | {seconds['dense'] / seconds[name]:.2f}x | "
                          f"{errors[name]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
