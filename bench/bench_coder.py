"""Throughput and size of rnnshrink's entropy coder on a 100 M-parameter LSTM's codes.

Not a test: run by hand, prints a table (markdown). In one run it

1. draws, seeded, the integer codes of a 2-layer LSTM of hidden ``--hidden`` and input
   ``--input`` (2500 and 2500: four (10000, 2500) matrices, 100 M codes): rounded Gaussians
   whose scale is ``--scale`` times a log-normal factor per row and per column (σ = 0.3),
   about 3.4 bits of entropy per code — what a uniform quantizer without clipping gives on
   trained LSTM weights (their codes fit a generalized Gaussian of shape 2, methods.md §8);
2. per matrix, times (wall clock, one process) :func:`rnnshrink.coding.estimate_bits`,
   :func:`rnnshrink.coding.encode` (model choice, rANS, and the decode check it makes before
   returning) and :func:`rnnshrink.coding.decode`, and checks the round trip;
3. measures in the same run the baseline: ``lzma`` (``--lzma-preset``, default 6) compressing
   and decompressing the same codes as int8 bytes; and the size floor: the empirical entropy
   of the codes, order 0 and given the row (the coder's side information is counted, the
   floor's is not).

    OPENBLAS_NUM_THREADS=1 python bench/bench_coder.py [--hidden 2500] [--input 2500]
        [--scale 2.5] [--lzma-preset 6] [--seed 0]
"""

import argparse
import lzma
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rnnshrink import coding  # noqa: E402


def matrix_codes(rng, rows, cols, scale):
    """(rows, cols) int32 codes: round(N(0, 1) · scale · a_i · b_j), a, b log-normal (σ 0.3)."""
    row = np.exp(rng.normal(0, 0.3, (rows, 1))).astype(np.float32)
    col = np.exp(rng.normal(0, 0.3, (1, cols))).astype(np.float32)
    values = rng.standard_normal((rows, cols), dtype=np.float32)
    values *= np.float32(scale) * row
    values *= col
    return np.rint(values).astype(np.int32)


def entropy_bits(codes):
    """Empirical entropy of ``codes`` in bits: order 0, and given the row."""
    low = int(codes.min())
    shifted = (codes - low).astype(np.int64)
    width = int(shifted.max()) + 1
    def entropy(counts):
        counts = counts[counts > 0]
        return float(-(counts * np.log2(counts / counts.sum())).sum())
    by_row = np.bincount((shifted + width * np.arange(codes.shape[0])[:, None]).ravel(),
                         minlength=codes.shape[0] * width).reshape(codes.shape[0], width)
    return entropy(by_row.sum(axis=0)), sum(entropy(row) for row in by_row)


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2500)
    parser.add_argument("--input", type=int, default=2500)
    parser.add_argument("--scale", type=float, default=2.5)
    parser.add_argument("--lzma-preset", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    shapes = [(4 * args.hidden, args.input), (4 * args.hidden, args.hidden)] * 2
    total = {key: 0.0 for key in ("n", "H0", "Hrow", "estimate", "coded", "lzma", "t_estimate",
                                  "t_encode", "t_decode", "t_lzma", "t_unlzma")}
    for k, shape in enumerate(shapes):
        codes = matrix_codes(rng, *shape, args.scale)
        h0, hrow = entropy_bits(codes)
        estimate, t_estimate = timed(coding.estimate_bits, codes)
        coded, t_encode = timed(coding.encode, codes)
        decoded, t_decode = timed(coding.decode, coded)
        assert np.array_equal(decoded, codes), "round trip failed"
        raw = np.clip(codes, -128, 127).astype(np.int8).tobytes()
        packed, t_lzma = timed(lzma.compress, raw, lzma.FORMAT_XZ, lzma.CHECK_NONE,
                               args.lzma_preset)
        _, t_unlzma = timed(lzma.decompress, packed)
        print(f"matrix {k} {shape}: {8 * coded.nbytes / codes.size:.3f} bits/code "
              f"(model gg{coded.beta}/{coded.axis}), encode {t_encode:.1f} s, "
              f"decode {t_decode:.1f} s", file=sys.stderr)
        for key, value in (("n", codes.size), ("H0", h0), ("Hrow", hrow), ("estimate", estimate),
                           ("coded", 8 * coded.nbytes), ("lzma", 8 * len(packed)),
                           ("t_estimate", t_estimate), ("t_encode", t_encode),
                           ("t_decode", t_decode), ("t_lzma", t_lzma), ("t_unlzma", t_unlzma)):
            total[key] += value
    n = total["n"]
    print(f"{int(n):,} codes in {len(shapes)} matrices {shapes[0]}, {shapes[1]}; "
          f"wall clock, one process\n")
    print("| | size (MB) | bits/code | vs entropy given row | encode s (M codes/s) "
          "| decode s (M codes/s) |")
    print("|---|---|---|---|---|---|")

    def row(name, bits, encode=None, decode=None):
        speed = [f"{t:.1f} ({n / t / 1e6:.1f})" if t else "—" for t in (encode, decode)]
        print(f"| {name} | {bits / 8e6:.2f} | {bits / n:.3f} | {bits / total['Hrow'] - 1:+.2%} "
              f"| {speed[0]} | {speed[1]} |")

    row("rnnshrink rANS (encode includes its decode check)", total["coded"], total["t_encode"],
        total["t_decode"])
    row("estimate_bits (no coding)", total["estimate"], total["t_estimate"])
    row(f"lzma preset {args.lzma_preset}, int8 codes", total["lzma"], total["t_lzma"],
        total["t_unlzma"])
    row("empirical entropy, order 0", total["H0"])
    row("empirical entropy given the row", total["Hrow"])


if __name__ == "__main__":
    main()
