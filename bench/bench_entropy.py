"""Past 8x within 1 %: fixed-rate quantization against the entropy-coded allocation (ecsq).

Not a test: run by hand, prints markdown tables. For each trained char LM (the fixture, and the
bench's own pydoc model from ``bench/setup_models.py``) and each size ratio, it applies, with NO
user data (the tool's own probes: text the model writes), the per-layer fixed-rate search
(``--target-ratio R --using quant``: 8/6/5/4/3-bit per layer with GPTQ codes), and
``ecsq:ratio=R`` with each sensitivity — ``rms`` (nothing but the file), ``hessian`` (E[x²] of
each matrix's inputs on the probes), ``fisher`` (diagonal Fisher, labels sampled from the model)
— with rounded codes and with GPTQ codes, and the default (``auto``: the better of hessian and
fisher, beta 0.5 or 1, by held-out probe KL). Each row: the LSTM size ratio reached, the held-out
bits per character and its change against the float model, and the seconds it took. Plain
4-bit and 3-bit per-group rounding (fixed points, not at the target) are listed for reference.

    python bench/bench_entropy.py [--tasks fixture,pydoc] [--ratios 8,10,16]
"""

import argparse
import time

import numpy as np

import rnnshrink
from bench_recipes import model_bits_per_char
from rnnshrink import budget
from rnnshrink.api import probes_for
from rnnshrink.dropin import expand_to_original
from rnnshrink.errors import OptionError
from rnnshrink.pipeline import Pipeline, parse_step
from rnnshrink.report import summarize
from rnnshrink.transforms import Context
from tasks import CACHE, ROOT

FIXED = ["quant:bits=4,group=64", "quant:bits=4,group=32,method=gptq",
         "quant:bits=3,group=32,method=gptq"]
ECSQ = [("rms, rounded", "sensitivity=rms,gptq=false"),
        ("hessian, rounded", "sensitivity=hessian,gptq=false"),
        ("fisher, rounded", "sensitivity=fisher,gptq=false"),
        ("hessian + GPTQ", "sensitivity=hessian"),
        ("fisher + GPTQ", "sensitivity=fisher"),
        ("default (auto + GPTQ)", "")]


def task_files(key):
    """(model path, held-out tokens) of a bench task."""
    if key == "fixture":
        tokens = np.load(ROOT / "fixtures" / "charlm_data.npz")["valid_tokens"][4000:20001]
        return ROOT / "fixtures" / "charlm.pt", tokens
    data = np.load(CACHE / "pydoc_charlm_data.npz")
    return CACHE / "pydoc_charlm.pt", data["valid_tokens"]


def measure(model, tokens, base, before, run):
    """``(ratio, bits/char, change %, seconds)`` of the model ``run()`` returns."""
    started = time.perf_counter()
    compressed = run()
    seconds = time.perf_counter() - started
    bpc = model_bits_per_char(expand_to_original(compressed, model), tokens)
    return before / summarize(compressed)["lstm_bytes"], bpc, 100 * (bpc - base) / base, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="fixture,pydoc")
    parser.add_argument("--ratios", default="8,10,16")
    args = parser.parse_args()
    for key in args.tasks.split(","):
        path, tokens = task_files(key)
        model = rnnshrink.read(path)
        x, probe = probes_for(model)
        context = Context(inputs=x, probe=probe)
        base = model_bits_per_char(model, tokens)
        before = summarize(model)["lstm_bytes"]
        print(f"\n## {key}: {path.name}, LSTM weights {before:,} bytes, {base:.4f} bits/char on "
              f"{len(tokens):,} held-out characters; probes: {probe}\n")
        print("| method | target | LSTM size ratio | bits/char | change | seconds |")
        print("|---|---|---|---|---|---|")
        for spec in FIXED:
            row = measure(model, tokens, base, before,
                          lambda: Pipeline([parse_step(spec)]).run(model, context))
            print(f"| `-t {spec}` | — | {row[0]:.2f}x | {row[1]:.4f} | {row[2]:+.2f} % | "
                  f"{row[3]:.0f} |", flush=True)
        for ratio in map(float, args.ratios.split(",")):
            try:
                row = measure(model, tokens, base, before, lambda: budget.search(
                    model, target_ratio=ratio, using=("quant",), x=x, context=context)[1])
                print(f"| fixed-rate search `--using quant` | {ratio:g}x | {row[0]:.2f}x | "
                      f"{row[1]:.4f} | {row[2]:+.2f} % | {row[3]:.0f} |", flush=True)
            except OptionError as error:
                print(f"| fixed-rate search `--using quant` | {ratio:g}x | {error} | | | |")
            for label, params in ECSQ:
                spec = f"ecsq:ratio={ratio:g}" + (f",{params}" if params else "")
                row = measure(model, tokens, base, before,
                              lambda: Pipeline([parse_step(spec)]).run(model, context))
                print(f"| ecsq {label} | {ratio:g}x | {row[0]:.2f}x | {row[1]:.4f} | "
                      f"{row[2]:+.2f} % | {row[3]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
