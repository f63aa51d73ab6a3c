"""Slim LSTM variants fitted to the trained char LM: sizes, output error and bits per character.

Not a test: run by hand, prints a markdown table. For every variant (all LSTM layers): the LSTM
parameters per layer, the LSTM byte ratio, the relative output error on the probe inputs (what
``compress`` and ``report --compare`` print) and validation bits per character on held-out
text, with the gates fitted on the probes (random tokens, the default) and on real text
(``--calib``-style: validation characters 0–2000 through the embedding, 10 sequences of 200).

    python bench/bench_slim.py [--model fixtures/charlm.pt] [--chars 4000] [--offset 4000]
"""

import argparse
from pathlib import Path

import numpy as np

import rnnshrink
from bench_recipes import bits_per_char
from rnnshrink.dropin import expand_to_original
from rnnshrink.fidelity import compare, probe_inputs
from rnnshrink.model.gated import SLIM_VARIANTS
from rnnshrink.pipeline import parse_step
from rnnshrink.report import summarize
from rnnshrink.transforms import Context

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "fixtures/charlm.pt"))
    parser.add_argument("--chars", type=int, default=4000, help="validation characters scored")
    parser.add_argument("--offset", type=int, default=4000,
                        help="first validation character scored")
    args = parser.parse_args()
    original = rnnshrink.read(args.model)
    data = np.load(ROOT / "fixtures/charlm_data.npz")
    tokens = data["valid_tokens"]
    held = tokens[args.offset: args.offset + args.chars + 1]
    table = original.tensors["embed.weight"].data.astype(np.float64)
    fits = {"probes": probe_inputs(original), "text": (table[tokens[:2000].reshape(10, 200)],
                                                       "validation chars 0-2000")}
    x = fits["probes"][0]
    before = summarize(original)
    layers = ", ".join(f"{row['params']:,}" for row in before["lstm_layers"])
    print(f"model {args.model}: LSTM params {before['lstm_params']:,} ({layers}), "
          f"{before['lstm_bytes']:,} bytes, {bits_per_char(original, held):.4f} bits/char on "
          f"validation chars {args.offset}-{args.offset + args.chars} (unigram model "
          f"{float(data['unigram_bpc']):.3f}); output error on "
          f"{fits['probes'][1]}\n")
    print("| variant | LSTM params per layer | LSTM size ratio | fitted on | output rel. error "
          "| bits/char |")
    print("|---|---|---|---|---|---|")
    for variant in SLIM_VARIANTS:
        for name, (inputs, probe) in fits.items():
            step = parse_step(f"slim:variant={variant}")
            slim = step.apply(original, Context(inputs=inputs, probe=probe))
            after = summarize(slim)
            params = " + ".join(f"{row['params']:,}" for row in after["lstm_layers"])
            error = compare(original, slim, x)["output_rel_error"]
            bpc = bits_per_char(expand_to_original(slim, original), held)
            print(f"| {variant} | {params} | {before['lstm_bytes'] / after['lstm_bytes']:.2f}x | "
                  f"{name} | {error:.3f} | {bpc:.3f} |")


if __name__ == "__main__":
    main()
