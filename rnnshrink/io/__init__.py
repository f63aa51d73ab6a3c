"""Readers (and later writers): every checkpoint format converts into the IR here, and only here.

Use :func:`read`; it recognises the format from the file's first bytes, not its name.
"""

import importlib
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..model import Dense

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
# format -> module of this package whose read(path, **options) converts it into the IR
READERS = {
    "rnnshrink": "container",
    "keras-h5": "keras_h5",
    "keras-zip": "keras_h5",
    "torch-zip": "torch_checkpoint",
    "torch-legacy": "torch_checkpoint",
    "safetensors": "safetensors_file",
    "onnx": "onnx_graph",
}
FORMATS = tuple(READERS)


def sniff(path):
    """Name the checkpoint format of ``path`` from its content.

    Returns
    -------
    str
        One of :data:`FORMATS`.

    Raises
    ------
    InputError
        Missing, empty, or not a checkpoint format rnnshrink reads.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if not path.is_file():
        raise InputError(path, "not a file")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise InputError(path, "empty file")
    if head.startswith(HDF5_MAGIC):
        from .container import is_container

        return "rnnshrink" if is_container(path) else "keras-h5"
    if head.startswith(ZIP_MAGIC):
        return _sniff_zip(path)
    # safetensors first: its header length may start with 0x80; a legacy torch file has a
    # fixed magic number byte (0xf9) at offset 8, never "{"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch-legacy"
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":
        return "onnx"
    raise InputError(
        path,
        "not a checkpoint rnnshrink reads "
        "(expected Keras .h5/.keras, PyTorch .pt/.pth/.bin, .safetensors or .onnx)",
    )


def _sniff_zip(path):
    from .zip_archive import Archive

    with Archive(path) as archive:
        names = archive.names
    if "config.json" in names and any(n.endswith(".weights.h5") for n in names):
        return "keras-zip"
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return "torch-zip"
    raise InputError(path, "zip archive is neither a PyTorch checkpoint nor a Keras .keras file")


def read(path, allow_nonfinite=False, **options):
    """Read a checkpoint into a :class:`rnnshrink.model.Model`.

    Parameters
    ----------
    path : str or os.PathLike
    allow_nonfinite : bool
        Accept NaN / Inf in LSTM weights (refused by default).
    **options
        Format-specific options, e.g. ``recurrent_activation`` for weights-only Keras files.

    Raises
    ------
    InputError
        The file cannot be read, is unsafe, or holds no LSTM layer.
    """
    fmt = sniff(path)
    reader = importlib.import_module(f"{__name__}.{READERS[fmt]}")
    model = reader.read(Path(path), **options)
    model.format = model.format or fmt
    model.path = str(path)
    if not model.lstm_layers:
        raise InputError(path, f"no LSTM layer found in this {fmt} file")
    if not allow_nonfinite:
        _refuse_nonfinite(model)
    return model


def _refuse_nonfinite(model):
    for layer in model.lstm_layers:
        for k, direction in enumerate(layer.directions):
            arrays = {name: w.values if isinstance(w, Dense) else w.materialize()
                      for name, w in direction.matrices.items()}  # Dense: no float64 copy
            arrays["b"] = direction.b
            for role, values in arrays.items():
                if not np.isfinite(values).all():
                    raise InputError(
                        model.path,
                        f"layer {layer.name} direction {k} has NaN or Inf in {role} "
                        "(pass --allow-nonfinite to read it anyway)",
                    )
