"""Time and peak memory of ``rnnshrink compress --tau`` and ``--target-ratio`` on a 100 M LSTM.

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
4. runs ``compress FILE --target-ratio R --json`` (the entropy-coded allocation, ``ecsq``) and,
   as its baseline on the same file, ``compress FILE -t quant:bits=8 --json`` (per-row
   rounding to 8 bits, fast), and reads the LSTM ratio reached and the output relative error
   (on compress's own probes) off their summaries;

and prints wall time, CPU time (user + system) and peak RSS of each (``os.wait4``: the
child's own ``getrusage(RUSAGE_CHILDREN)`` figure, not a maximum over every child so far),
their ratios, and the model file's size, so "memory within ~2x the model" can be read off.

    python bench/bench_big.py [--hidden 2500] [--input 2500] [--tau 0.5] [--noise 0.3]
                              [--target-ratio 8]
"""

import argparse
import json
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


def measure(command, summary=False):
    """Run ``command``; wall seconds, CPU seconds, peak RSS in MB (``os.wait4``) and its stdout
    (with ``summary``, parsed as compress's JSON summary, stderr kept apart)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                   stderr=errors if summary else subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
        out = process.stdout.read().decode()
        _, status, usage = os.wait4(process.pid, 0)
        errors.seek(0)
        out_errors = errors.read().decode()
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{out}{out_errors}")
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, cpu, usage.ru_maxrss / 1024, json.loads(out) if summary else out  # kB


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=2500)
    parser.add_argument("--input", type=int, default=2500)
    parser.add_argument("--tau", type=float, default=0.5)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--target-ratio", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "big.pt"
        start = time.perf_counter()
        count = build(model, args.hidden, args.input, args.noise)
        built = time.perf_counter() - start
        size = model.stat().st_size / 2**20
        print(f"model: 2-layer LSTM, hidden {args.hidden}, input {args.input}, {count / 1e6:.1f} M "
              f"parameters, {size:.0f} MB file (built in {built:.1f} s); cores: {os.cpu_count()}\n")
        compress = [sys.executable, "-m", "rnnshrink", "compress", str(model), "-o",
                    str(Path(folder) / "out.h5"), "--force"]
        *ours, out = measure(compress + ["--tau", str(args.tau)])
        *base, ranks = measure([sys.executable, "-c", BASELINE, str(model), str(args.tau)])
        *coded, coded_summary = measure(compress + ["--target-ratio", str(args.target_ratio),
                                                    "--json"], summary=True)
        *rounded, rounded_summary = measure(compress + ["-t", "quant:bits=8", "--json"],
                                            summary=True)
    print("| run | wall s | CPU s | peak RSS MB | RSS / file | LSTM ratio | output rel. error |")
    print("|---|---|---|---|---|---|---|")
    rows = [(f"rnnshrink compress --tau {args.tau}", ours, None),
            ("baseline: read + numpy.linalg.svd rank rule", base, None),
            (f"rnnshrink compress --target-ratio {args.target_ratio:g} (ecsq)", coded,
             coded_summary),
            ("baseline: rnnshrink compress -t quant:bits=8 (rounding)", rounded, rounded_summary)]
    for name, (wall, cpu, peak), summary in rows:
        quality = (f"{summary['lstm_ratio']:.4f} | {summary['output_rel_error']:.3e}" if summary
                   else "– | –")
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {peak:.0f} | {peak / size:.2f} | {quality} |")
    print(f"\ncompress --tau / baseline: time {ours[0] / base[0]:.2f}x, memory "
          f"{ours[2] / base[2]:.2f}x")
    print(f"baseline ranks: {' '.join(ranks.split())}")
    print("compress --tau output:\n" + out)
    print("compress --target-ratio notes:\n" + "\n".join(coded_summary["notes"]))


if __name__ == "__main__":
    main()
