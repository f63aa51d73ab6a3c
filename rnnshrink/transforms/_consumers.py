"""The layers that read an LSTM layer's output, found and rebuilt; checks shared by transforms.

A layer's *readers* are its consumers when rnnshrink can refit them: LSTM or Dense layers
whose only input is that layer's whole output. The transforms that change a layer's output
width or basis (``svd``, ``lowrank`` with ``share_next``, ``iss``) find them with
:func:`readers`, take the matrices that read the output from :func:`reader_weights`, and put
new ones back with :func:`rebuild_readers` and :func:`dense_like`. :func:`require_dense` and
:func:`check_rank_choice` are the option checks these transforms share.
"""

import dataclasses

import numpy as np

from ..errors import OptionError
from ..model import Dense, DenseLayer, LSTMLayer


def readers(model, layer):
    """The layers that read ``layer``'s output and can be refit, or None and why not.

    Returns
    -------
    found : list of LSTMLayer or DenseLayer, or None
    reason : str
        Why the consumer is unknown ('' when found).
    """
    found = model.consumers(layer.name)
    if not found:
        return None, "consumer unknown"
    for consumer in found:
        if not isinstance(consumer, (LSTMLayer, DenseLayer)):
            return None, f"consumer {consumer.name} ({consumer.kind}) cannot be refit"
        width = consumer.input_size if isinstance(consumer, LSTMLayer) else consumer.W.shape[1]
        if consumer.inputs != [layer.name] or width != layer.output_size:
            return None, f"consumer {consumer.name} reads more than this layer"
    return found, ""


def reader_weights(consumer):
    """The matrices of ``consumer`` that read its input: a Dense W, or each direction's W."""
    if isinstance(consumer, DenseLayer):
        return [consumer.W]
    return [direction.W for direction in consumer.directions]


def rebuild_readers(reading, matrices):
    """New consumer layers with their input matrices replaced by ``matrices``.

    Parameters
    ----------
    reading : list of tuple (LSTMLayer or DenseLayer, Dense)
        Each consumer with one of its :func:`reader_weights`, in order.
    matrices : list of ndarray
        The new values of those matrices, stored like the old ones.

    Returns
    -------
    dict of str to LSTMLayer or DenseLayer
        The rebuilt consumers by name.
    """
    weights = {}
    for (consumer, old), values in zip(reading, matrices):
        weights.setdefault(consumer.name, (consumer, []))[1].append(dense_like(values, old))
    rebuilt = {}
    for name, (consumer, new) in weights.items():
        if isinstance(consumer, DenseLayer):
            rebuilt[name] = dataclasses.replace(
                consumer, W=new[0], source={**consumer.source, "changed": True})
        else:
            directions = [dataclasses.replace(d, W=w) for d, w in zip(consumer.directions, new)]
            rebuilt[name] = dataclasses.replace(consumer, directions=directions)
    return rebuilt


def dense_like(values, like):
    """A Dense of ``values`` held and stored like the Dense ``like``."""
    return Dense(np.asarray(values).astype(like.values.dtype), like.stored_dtype)


def require_dense(model, names, owner):
    """Raise OptionError unless the named layers and their consumers hold Dense matrices."""
    for name in names:
        layer = model.layer(name)
        found, _ = readers(model, layer)
        weights = [(f"{name} {role}", weight) for direction in layer.directions
                   for role, weight in direction.matrices.items()]
        weights += [(f"{c.name} W", w) for c in found or () for w in reader_weights(c)]
        for where, weight in weights:
            if not isinstance(weight, Dense):
                before = "slim" if weight.kind == "gated" else "prune/quant"
                raise OptionError(f"{owner} needs dense weights, but {where} is {weight.kind}: "
                                  f"{owner} must come before {before}")


def check_rank_choice(owner, params):
    """Raise OptionError unless exactly one of ``tau``, ``rank``, ``rank_ratio`` is set and a
    ``rank_ratio`` is in (0, 1]."""
    given = [key for key in ("tau", "rank", "rank_ratio") if params[key] is not None]
    if len(given) != 1:
        raise OptionError(f"{owner}: give exactly one of tau, rank, rank_ratio, "
                          f"got {', '.join(given) or 'none'}")
    if params["rank_ratio"] is not None and params["rank_ratio"] <= 0:
        raise OptionError(f"{owner}: rank_ratio must be in (0, 1], got {params['rank_ratio']}")
