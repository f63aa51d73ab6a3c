"""Time and peak memory of ``rnnshrink compress --tau`` on a ~100 M-parameter LSTM.

Not a test: run by hand, prints a table (markdown). In one run it

1. builds, seeded and in a temporary directory, a 2-layer LSTM state dict (PyTorch names
   ``lstm.weight_ih_l0`` ..., float32, written with rnnshrink's own ``torch_writer``) of hidden
   ``--hidden`` and input ``--input`` (2500 and 2500: 100 M parameters, 400 MB). Every
   matrix is low rank plus noise, ``W = A diag(s) B / scale + σ G`` with ``s_k ∝ k^-1/2`` for
   ``k < 256`` (A, B, G Gaussian), the noise holding ``--noise`` of the energy: a decaying
   spectrum whose ``tau = 0.5`` rank is a few dozen;
2. runs ``python -m rnnshrink compress FILE --tau TAU -o out.h5`` as a subprocess;
3. runs the baseline as a subprocess: read the same file, full ``numpy.linalg.svd`` of every
   recurrent matrix, the same rank rule (:func:`rnnshrink.transforms.svd.projection_rank`);

and prints wall time and peak RSS of each (``os.wait4``: the child's own
``getrusage(RUSAGE_CHILDREN)`` figure, not a maximum over every child so far), their ratios,
and the model file's size, so "memory within ~2x the model" can be read off.

    python bench/bench_big.py [--hidden 2500] [--input 2500] [--tau 0.5] [--noise 0.3]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from _common import ROOT

LOW_RANK = 256


def structured(rng, rows, cols, noise):
    """A (rows, cols) float32 matrix: rank-256 part with s_k ∝ k^-1/2, plus Gaussian noise
    holding a fraction ``noise`` of the energy; rows of unit norm."""
    k = min(LOW_RANK, rows, cols)
    A = rng.standard_normal((rows, k), dtype=np.float32) / np.float32(np.sqrt(rows))
    B = rng.standard_normal((k, cols), dtype=np.float32) / np.float32(np.sqrt(cols))
    s = (np.arange(1, k + 1) ** -0.5).astype(np.float32)
    low = (A * s) @ B
    target = rows  # unit row norms: pre-activations of order 1 on unit-variance inputs
    low *= np.float32(np.sqrt(target * (1 - noise)) / np.linalg.norm(low))
    sigma = np.sqrt(target * noise / (rows * cols))
    return low + rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(sigma)


def build(path, hidden, inputs, noise, seed=0):
    """Write the 2-layer LSTM state dict; returns the parameter count."""
    from rnnshrink.io.torch_pickle import StoredTensor
    from rnnshrink.io.torch_writer import save_state

    rng = np.random.default_rng(seed)
    state, count = OrderedDict(), 0
    for layer, width in enumerate([inputs, hidden]):
        tensors = {
            f"lstm.weight_ih_l{layer}": structured(rng, 4 * hidden, width, noise),
            f"lstm.weight_hh_l{layer}": structured(rng, 4 * hidden, hidden, noise),
            f"lstm.bias_ih_l{layer}": rng.standard_normal(4 * hidden, dtype=np.float32) * 0.1,
            f"lstm.bias_hh_l{layer}": np.zeros(4 * hidden, np.float32),
        }
        for name, data in tensors.items():
            state[name] = StoredTensor(np.ascontiguousarray(data), "float32", parameter=True)
            count += data.size
    save_state(state, path)
    return count


BASELINE = """
import sys, numpy as np, rnnshrink
from rnnshrink.transforms.svd import projection_rank
model = rnnshrink.io.read(sys.argv[1])
tau = float(sys.argv[2])
for layer in model.lstm_layers:
    for direction in layer.directions:
        s = np.linalg.svd(direction.R.materialize().astype(np.float64), compute_uv=True,
                          full_matrices=False)[1]
        print(layer.name, projection_rank(s, tau))
"""


def measure(command):
    """Run ``command``; wall seconds, peak RSS in MB (``os.wait4``), its stdout."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{out}")
    return seconds, usage.ru_maxrss / 1024, out  # ru_maxrss is in kB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=2500)
    parser.add_argument("--input", type=int, default=2500)
    parser.add_argument("--tau", type=float, default=0.5)
    parser.add_argument("--noise", type=float, default=0.3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "big.pt"
        start = time.perf_counter()
        count = build(model, args.hidden, args.input, args.noise)
        built = time.perf_counter() - start
        size = model.stat().st_size / 2**20
        print(f"model: 2-layer LSTM, hidden {args.hidden}, input {args.input}, {count / 1e6:.1f} M "
              f"parameters, {size:.0f} MB file (built in {built:.1f} s); cores: {os.cpu_count()}\n")
        t_ours, m_ours, out = measure([sys.executable, "-m", "rnnshrink", "compress", str(model),
                                       "--tau", str(args.tau), "-o", str(Path(folder) / "out.h5")])
        t_base, m_base, ranks = measure([sys.executable, "-c", BASELINE, str(model),
                                         str(args.tau)])
    print("| run | wall s | peak RSS MB | RSS / file |")
    print("|---|---|---|---|")
    print(f"| rnnshrink compress --tau {args.tau} | {t_ours:.1f} | {m_ours:.0f} | "
          f"{m_ours / size:.2f} |")
    print(f"| baseline: read + numpy.linalg.svd rank rule | {t_base:.1f} | {m_base:.0f} | "
          f"{m_base / size:.2f} |")
    print(f"\ncompress / baseline: time {t_ours / t_base:.2f}x, memory {m_ours / m_base:.2f}x")
    print(f"baseline ranks: {' '.join(ranks.split())}")
    print("compress output:\n" + out)


if __name__ == "__main__":
    main()
