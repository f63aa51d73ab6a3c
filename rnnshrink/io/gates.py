"""Gate orders of the frameworks, and the one function that converts between them.

The IR's canonical order is i, f, g, o (see :mod:`rnnshrink.model.ir`). Keras calls the same
order i, f, c, o; PyTorch i, f, g, o; ONNX stores i, o, f, c.
"""

import numpy as np

CANONICAL = "ifgo"
ORDERS = {
    "keras": "ifgo",
    "torch": "ifgo",
    "onnx": "iofg",
}


def reorder(array, source, target, axis=0):
    """Permute the four gate blocks of ``array`` along ``axis`` from one gate order to another.

    Parameters
    ----------
    array : ndarray
        ``array.shape[axis]`` is ``4 * hidden``.
    source, target : str
        Gate orders as four letters (``"ifgo"``, ``"iofg"``) or keys of :data:`ORDERS`.
    """
    source = ORDERS.get(source, source)
    target = ORDERS.get(target, target)
    if source == target:  # PyTorch and Keras are canonical already: no copy of a big matrix
        return np.asarray(array)
    blocks = np.split(np.asarray(array), 4, axis=axis)
    by_gate = dict(zip(source, blocks))
    return np.concatenate([by_gate[g] for g in target], axis=axis)


def to_canonical(array, source, axis=0):
    """Blocks in framework order ``source`` -> canonical i, f, g, o."""
    return reorder(array, source, CANONICAL, axis)


def from_canonical(array, target, axis=0):
    """Canonical i, f, g, o -> framework order ``target``."""
    return reorder(array, CANONICAL, target, axis)
