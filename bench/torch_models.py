"""The PyTorch modules the benchmarks train, quantize and export (bench-only: needs torch).

* :class:`CharLM` — ``nn.Embedding -> nn.LSTM (batch-first) -> nn.Linear``, the layout of the
  fixture char LM (``fixtures/charlm.pt``: embed 16, 2 x 128) and of the bench's own
  (:mod:`setup_models`);
* :class:`Stack` — a bare ``nn.LSTM`` whose forward returns only the output sequence ``Y``, for
  models with no embedding or head (the 2-layer 1024-unit LSTM).

Both take batch-first inputs and return one tensor, so a peer (torch dynamic quantization, the
ONNX export) treats them alike.
"""

import torch
from torch import nn


class CharLM(nn.Module):
    """Character language model: tokens (batch, time) int64 -> logits (batch, time, vocab)."""

    def __init__(self, vocab, embed, hidden, layers):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        return self.head(self.lstm(self.embed(tokens))[0])


class Stack(nn.Module):
    """An LSTM stack: x (batch, time, input) float32 -> Y (batch, time, hidden)."""

    def __init__(self, inputs, hidden, layers):
        super().__init__()
        self.lstm = nn.LSTM(inputs, hidden, num_layers=layers, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


def build(spec):
    """The module described by ``spec`` (``{"kind": "charlm" | "stack", ...sizes}``)."""
    kwargs = {key: value for key, value in spec.items() if key != "kind"}
    return {"charlm": CharLM, "stack": Stack}[spec["kind"]](**kwargs)


def load(spec, path):
    """:func:`build` ``spec`` and load the state dict at ``path`` (``weights_only``), in eval mode."""
    module = build(spec)
    module.load_state_dict(torch.load(path, weights_only=True))
    return module.eval()
