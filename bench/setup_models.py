"""Make the benchmark models that are not fixtures, once, under ``bench/.cache/`` (gitignored).

Not a test: run by hand (``bench/run_all.py`` runs it first). It writes

* ``pydoc_charlm.pt`` + ``pydoc_charlm_data.npz``: a character language model trained here for
  real — ``nn.Embedding(V, 32) -> nn.LSTM(32, 256, num_layers=2) -> nn.Linear(256, V)`` — on the
  text of Python's own reference documentation, ``pydoc_data.topics`` (the help() topics that
  ship with every CPython; a different corpus from the fixture's LICENSE + module docstrings).
  The topics are joined in sorted-key order and cleaned to printable ASCII plus newline (tabs as
  4 spaces); the first 90 % is training text, the last 10 % is held out. The npz holds ``vocab``
  (code points), ``valid_tokens`` (the first 20,000 held-out characters, scored by the bench),
  ``calib_tokens`` (the last 2,000 training characters, rnnshrink's calibration inputs),
  ``valid_bpc`` (the whole 20,000 characters in one sequence, as the fixture's figure),
  ``unigram_bpc`` and the training steps and seconds. Training: Adam at 3e-3 with cosine decay
  to 3e-4, gradient-norm clip 1, ``--steps`` of batch 32 x 100 random windows, seeded; 1 thread
  by default (the machine is shared).
* ``lstm1024.pt``: the state dict of a 2-layer, 1024-unit ``nn.LSTM`` (input 256) with the
  synthetic weights of :func:`_common.synthetic_stack` (not trained: no task metric).

Existing files are kept unless ``--force``.

    python bench/setup_models.py [--steps 800] [--threads 1] [--force]
"""

import argparse
import time

import numpy as np
import torch
from torch import nn

from _common import CACHE, synthetic_stack
from torch_models import CharLM

EMBED, HIDDEN, LAYERS = 32, 256, 2
BATCH, WINDOW = 32, 100
VALID_CHARS, CALIB_CHARS = 20_000, 2_000


def corpus():
    """The cleaned text of ``pydoc_data.topics``, topics in sorted-key order."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics)).replace("\t", "    ")
    return "".join(ch for ch in text if ch == "\n" or 32 <= ord(ch) < 127)


def bits_per_char_torch(model, tokens):
    """Mean cross-entropy in bits of predicting ``tokens[1:]`` from ``tokens[:-1]`` (one sequence)."""
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens[None, :-1]))[0]
        return float(nn.functional.cross_entropy(logits, torch.from_numpy(tokens[1:]))) / np.log(2)


def train_charlm(steps, threads):
    """Train the pydoc char LM; returns its state dict and the data npz contents."""
    torch.set_num_threads(threads)
    text = corpus()
    vocab = sorted(set(text))
    data = np.array([vocab.index(ch) for ch in text], dtype=np.int64)
    split = int(len(data) * 0.9)
    train, valid = data[:split], data[split:split + VALID_CHARS]
    counts = np.bincount(train, minlength=len(vocab)) + 1.0
    unigram_bpc = float(-np.log2((counts / counts.sum())[valid]).mean())
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = CharLM(len(vocab), EMBED, HIDDEN, LAYERS)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=3e-4)
    train_t, offsets = torch.from_numpy(train), torch.arange(WINDOW + 1)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        starts = torch.from_numpy(rng.integers(0, len(train) - WINDOW, size=BATCH))
        batch = train_t[starts[:, None] + offsets]
        logits = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == 1:
            print(f"step {step}: train {loss.item() / np.log(2):.3f} bits/char, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    seconds = time.perf_counter() - started
    model.eval()
    valid_bpc = bits_per_char_torch(model, valid)
    print(f"trained in {seconds:.0f} s: held-out {valid_bpc:.4f} bits/char "
          f"(unigram {unigram_bpc:.4f}); {len(text)} chars, vocab {len(vocab)}")
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    data = {"vocab": np.array([ord(ch) for ch in vocab], np.uint32), "valid_tokens": valid,
            "calib_tokens": train[-CALIB_CHARS:], "valid_bpc": np.float64(valid_bpc),
            "unigram_bpc": np.float64(unigram_bpc), "train_steps": np.int64(steps),
            "train_seconds": np.float64(seconds)}
    return state, data


def write_lstm1024(path):
    """The synthetic 2 x 1024 stack as an ``nn.LSTM`` state dict (``bias_hh`` zero)."""
    state = {}
    for index, layer in enumerate(synthetic_stack(np.random.default_rng(0)).lstm_layers):
        (direction,) = layer.directions
        for key, value in (("weight_ih", direction.W.materialize()),
                           ("weight_hh", direction.R.materialize()),
                           ("bias_ih", direction.b), ("bias_hh", np.zeros_like(direction.b))):
            state[f"lstm.{key}_l{index}"] = torch.from_numpy(np.asarray(value, np.float32).copy())
    torch.save(state, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps of the char LM")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--force", action="store_true", help="remake existing files")
    args = parser.parse_args()
    CACHE.mkdir(exist_ok=True)
    charlm, charlm_data = CACHE / "pydoc_charlm.pt", CACHE / "pydoc_charlm_data.npz"
    if args.force or not (charlm.exists() and charlm_data.exists()):
        state, data = train_charlm(args.steps, args.threads)
        torch.save(state, charlm)
        np.savez(charlm_data, **data)
        print(f"wrote {charlm} and {charlm_data}")
    big = CACHE / "lstm1024.pt"
    if args.force or not big.exists():
        write_lstm1024(big)
        print(f"wrote {big}")


if __name__ == "__main__":
    main()
