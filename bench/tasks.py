"""The models the peer benchmark measures, with their held-out data (bench-only).

Each :class:`Task` names a PyTorch state dict and the module it loads into
(:mod:`torch_models`), the held-out inputs every method is scored on, the targets of the task
metric (next characters) where there is one, and rnnshrink's calibration inputs (``--calib``:
inputs of the first LSTM, taken from text that is not scored).

* ``fixture`` — the trained char LM ``fixtures/charlm.pt`` (2 x 128): calibration on validation
  characters 0–2,000, scored on characters 4,000–20,000 of ``fixtures/charlm_data.npz``;
* ``pydoc`` — the char LM :mod:`setup_models` trains on Python's reference docs (2 x 256):
  calibration on the last 2,000 training characters, scored on 20,000 held-out characters;
* ``lstm1024`` — a 2-layer, 1024-unit LSTM (input 256) with the synthetic weights of
  :func:`_common.synthetic_stack`, not trained: scored on seeded standard-normal sequences,
  output error and latency only (no task metric); rnnshrink uses its default probes.
"""

from dataclasses import dataclass

import numpy as np

from _common import CACHE, ROOT, SYNTHETIC_INPUT, windows

STEPS = 200  # characters (time steps) per scored sequence; also the latency sequence


@dataclass
class Task:
    """A model and its data.

    Attributes
    ----------
    key, title : str
    spec : dict
        :func:`torch_models.build` arguments.
    weights : pathlib.Path
        The float32 state dict.
    input_name : str
        Name of the ONNX graph input (``tokens`` or ``x``).
    held_out : ndarray of shape (n, STEPS) int64, or (n, STEPS, input) float32
    targets : ndarray of shape (n, STEPS) int64, or None
        Next-character targets of ``held_out`` (None: no task metric).
    calib : ndarray of shape (N, T, input of the first LSTM), or None
        rnnshrink's calibration inputs (None: its default probes).
    scored : str
        What ``held_out`` is, for the tables.
    repeats : int
        Timed runs per method (more for the fast small models, whose timings are noisier).
    """

    key: str
    title: str
    spec: dict
    weights: object
    input_name: str
    held_out: np.ndarray
    targets: object
    calib: object
    scored: str
    repeats: int = 30


def _embedded(weights, tokens):
    """``tokens`` cut into sequences of STEPS and looked up in the state dict's
    ``embed.weight``: (len(tokens) // STEPS, STEPS, embed)."""
    import torch

    table = torch.load(weights, weights_only=True)["embed.weight"].numpy()
    return table[tokens[:len(tokens) // STEPS * STEPS].reshape(-1, STEPS)].astype(np.float32)


def fixture():
    weights = ROOT / "fixtures" / "charlm.pt"
    tokens = np.load(ROOT / "fixtures" / "charlm_data.npz")["valid_tokens"]
    held_out, targets = windows(tokens[4000:], STEPS)
    return Task("fixture", "fixture char LM (fixtures/charlm.pt: embed 16, LSTM 2 x 128)",
                {"kind": "charlm", "vocab": 96, "embed": 16, "hidden": 128, "layers": 2},
                weights, "tokens", held_out, targets, _embedded(weights, tokens[:2000]),
                f"{held_out.size:,} held-out characters (validation 4,000-20,000), "
                f"{len(held_out)} sequences of {STEPS}")


def pydoc():
    weights, data = CACHE / "pydoc_charlm.pt", CACHE / "pydoc_charlm_data.npz"
    if not weights.exists():
        raise SystemExit(f"{weights} is missing: run python bench/setup_models.py first")
    data = np.load(data)
    held_out, targets = windows(data["valid_tokens"], STEPS)
    return Task("pydoc", "pydoc char LM (trained by bench/setup_models.py: embed 32, "
                "LSTM 2 x 256)",
                {"kind": "charlm", "vocab": len(data["vocab"]), "embed": 32, "hidden": 256,
                 "layers": 2},
                weights, "tokens", held_out, targets,
                _embedded(weights, data["calib_tokens"]),
                f"{held_out.size:,} held-out characters of the Python reference docs, "
                f"{len(held_out)} sequences of {STEPS}")


def lstm1024():
    weights = CACHE / "lstm1024.pt"
    if not weights.exists():
        raise SystemExit(f"{weights} is missing: run python bench/setup_models.py first")
    held_out = np.random.default_rng(1).standard_normal((4, STEPS, SYNTHETIC_INPUT))
    return Task("lstm1024", "2-layer 1024-unit LSTM (input 256, synthetic weights, untrained)",
                {"kind": "stack", "inputs": SYNTHETIC_INPUT, "hidden": 1024, "layers": 2},
                weights, "x", held_out.astype(np.float32), None, None,
                f"{len(held_out)} seeded standard-normal sequences of {STEPS} (no task metric)",
                repeats=8)


TASKS = {"fixture": fixture, "pydoc": pydoc, "lstm1024": lstm1024}
