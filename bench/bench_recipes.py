"""Size against fidelity on the trained character language model, for a list of recipes.

Not a test: run by hand, prints a table (markdown). For each recipe: LSTM byte ratio, the
relative error of the LSTM outputs on probe inputs (what ``compress`` reports), and the task
metric — validation bits per character of the char LM — computed with the reference forward
pass on the drop-in (original-shape) weights. Data-aware steps (``quant:method=gptq``) are
calibrated on the probes, or on ``--calib`` (an .npy of first-layer inputs, as ``compress``);
score held-out characters with ``--offset``.

    python bench/bench_recipes.py [--model fixtures/charlm.pt] [--chars 4000] [--offset 0]
                                  [--calib inputs.npy]
"""

import argparse
import time

import numpy as np

import rnnshrink
from _common import ROOT, bits_per_char, windows
from rnnshrink.dropin import expand_to_original
from rnnshrink.fidelity import compare, load_calibration, probe_inputs
from rnnshrink.model import run_stack
from rnnshrink.pipeline import Pipeline, parse_step
from rnnshrink.report import summarize
from rnnshrink.transforms import Context

RECIPES = [
    ["quant:bits=16"],
    ["quant:bits=8"],
    ["quant:bits=4,group=64"],
    ["quant:bits=4,group=64,clip=mse"],
    ["quant:bits=3,group=32"],
    ["quant:bits=8,method=gptq"],
    ["quant:bits=4,group=64,method=gptq"],
    ["quant:bits=4,group=32"],
    ["quant:bits=4,group=32,method=gptq"],
    ["quant:bits=3,group=64"],
    ["quant:bits=3,group=64,method=gptq"],
    ["quant:bits=3,group=32,method=gptq"],
    ["svd:tau=0.9"],
    ["svd:tau=0.7"],
    ["svd:tau=0.5"],
    ["svd:rank=32"],
    ["lowrank:rank=32"],
    ["iss:keep=0.75"],
    ["iss:keep=0.5"],
    ["prune:sparsity=0.5"],
    ["prune:sparsity=0.8,scope=global"],
    ["svd:tau=0.9", "quant:bits=8"],
    ["svd:tau=0.9", "quant:bits=4,group=64"],
    ["iss:keep=0.75", "prune:sparsity=0.5", "quant:bits=8"],
    ["prune:sparsity=0.5", "quant:bits=4,group=64"],
    ["prune:sparsity=0.5", "quant:bits=4,group=64,method=gptq"],
    ["svd:tau=0.9", "quant:bits=4,group=64,method=gptq"],
]


def model_bits_per_char(model, tokens, steps=200):
    """Validation bits per character of the char LM ``embed -> LSTM stack -> head``."""
    table = model.tensors["embed.weight"].data.astype(np.float64)
    head_w = model.tensors["head.weight"].data.astype(np.float64)
    head_b = model.tensors["head.bias"].data.astype(np.float64)
    inputs, targets = windows(tokens, steps)
    y = run_stack(model.lstm_layers, table[inputs])[-1][0]
    return bits_per_char(y @ head_w.T + head_b, targets)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "fixtures/charlm.pt"))
    parser.add_argument("--chars", type=int, default=4000, help="validation characters scored")
    parser.add_argument("--offset", type=int, default=0, help="first validation character scored")
    parser.add_argument("--calib", help=".npy of first-layer inputs for data-aware steps")
    args = parser.parse_args()
    original = rnnshrink.read(args.model)
    tokens = np.load(ROOT / "fixtures/charlm_data.npz")["valid_tokens"]
    tokens = tokens[args.offset: args.offset + args.chars + 1]
    x, probe = probe_inputs(original)
    calib, calib_probe = load_calibration(args.calib, original) if args.calib else (x, probe)
    context = Context(inputs=calib, probe=calib_probe)
    base_bpc = model_bits_per_char(original, tokens)
    before = summarize(original)["lstm_bytes"]
    print(f"model {args.model}: LSTM weights {before} bytes, validation {base_bpc:.4f} bits/char "
          f"on {args.chars} chars from {args.offset}; output error on {probe}; "
          f"calibration: {calib_probe}\n")
    print("| recipe | LSTM size ratio | output rel. error | bits/char | bpc change |")
    print("|---|---|---|---|---|")
    for recipe in RECIPES:
        started = time.perf_counter()
        compressed = Pipeline([parse_step(s) for s in recipe]).run(original, context)
        ratio = before / summarize(compressed)["lstm_bytes"]
        error = compare(original, compressed, x)["output_rel_error"]
        bpc = model_bits_per_char(expand_to_original(compressed, original), tokens)
        print(f"| `{' '.join('-t ' + s for s in recipe)}` | {ratio:.2f}x | {error:.4f} | "
              f"{bpc:.4f} | {100 * (bpc - base_bpc) / base_bpc:+.2f} % |"
              + ("" if time.perf_counter() - started < 60 else " (slow)"))


if __name__ == "__main__":
    main()
