"""The encoder's choice of model for one matrix of codes, and the size that choice codes to.

The candidates: each shape of :data:`~rnnshrink.coding.tables.SHAPES`, with one scale for the
whole matrix (``"tensor"``), one per row (``"row"``) or one per column (``"col"``). For each, the
best scale of every row / column is read off histograms of code magnitudes (counted once) times
the bits each context spends per magnitude; the side information (the scale indices, packed
by :func:`~rnnshrink.coding.packing.pack_bytes`) is counted at its packed size. The candidate
with the fewest bits wins, so no frequency table is ever stored.

References
----------
rnnshrink ``methods.md`` §8 (a parametric model whose per-row / per-column scale the decoder
rebuilds from the side information). Han, Mao & Dally, "Deep Compression", ICLR 2016,
arXiv 1510.00149 (entropy-coded quantized weights).
"""

from dataclasses import dataclass

import numpy as np

from .packing import pack_bytes
from .rans import lane_count
from .tables import MAX_K, SHAPES, magnitude_bits

AXES = ("tensor", "row", "col")
HEADER_BYTES = 8
LANE_BITS = 24  # bits a lane's final state holds beyond the ideal code length, on average
_CHUNK = 1 << 20  # entries per pass when counting


@dataclass(frozen=True)
class Choice:
    """A chosen model: shape index, axis (index into :data:`AXES`), scale index per row /
    column (one for ``"tensor"``), escape width in bytes, and the estimated size in bits."""

    shape_index: int
    axis: int
    scales: np.ndarray
    width: int
    bits: float


def escape_width(largest):
    """Bytes per escaped code when the largest code magnitude is ``largest``: 1, 2 or 4."""
    return 1 if largest <= 2**7 - 1 else 2 if largest <= 2**15 - 1 else 4


def histograms(codes, mask, limit):
    """Counts of the kept codes' magnitudes ``0 .. limit`` per row and per column.

    Parameters
    ----------
    codes : ndarray of int, shape (rows, cols)
    mask : ndarray of bool, shape (rows, cols), or None
    limit : int
        Magnitudes above it are counted as ``limit``.

    Returns
    -------
    by_row : ndarray of int64, shape (rows, limit + 1)
    by_col : ndarray of int64, shape (cols, limit + 1)
    """
    rows, cols = codes.shape
    width = limit + 2  # the last bucket holds the entries a mask drops
    by_row = np.zeros((rows, width), np.int64)
    by_col = np.zeros((cols, width), np.int64)
    col_offsets = np.arange(cols) * width
    stride = max(1, _CHUNK // max(cols, 1))
    for start in range(0, rows, stride):
        part = np.minimum(np.abs(codes[start:start + stride].astype(np.int64)), limit)
        if mask is not None:
            part[~mask[start:start + stride]] = limit + 1
        count = part.shape[0]
        index = part + (np.arange(count) * width)[:, None]
        by_row[start:start + count] = np.bincount(index.ravel(), minlength=count * width) \
            .reshape(count, width)
        by_col += np.bincount((part + col_offsets).ravel(), minlength=cols * width) \
            .reshape(cols, width)
    return by_row[:, :-1], by_col[:, :-1]


def side_bytes(scales):
    """The stored side information of scale indices ``scales`` (uint8 values)."""
    return pack_bytes(np.asarray(scales, np.uint8).tobytes())


def choose(codes, mask=None):
    """The model coding ``codes`` (at ``mask`` positions) in the fewest bits.

    Parameters
    ----------
    codes : ndarray of int, shape (rows, cols)
    mask : ndarray of bool, shape (rows, cols), optional

    Returns
    -------
    Choice
        ``bits``: the ideal code length of the payload (``-Σ log2 p`` under the integer
        frequency tables, escapes at their stored width) plus the header, the packed side
        information and :data:`LANE_BITS` per lane.
    """
    kept = codes if mask is None else codes[mask]
    largest = int(np.abs(kept.astype(np.int64)).max(initial=0))
    limit, width = min(largest, MAX_K + 1), escape_width(largest)
    by_row, by_col = histograms(codes, mask, limit)
    whole = by_row.sum(axis=0)
    best = None
    for shape_index in range(len(SHAPES)):
        bits = magnitude_bits(shape_index, width, limit)  # (scales, limit + 1)
        tensor_q = int(np.argmin(bits @ whole))
        candidates = [(0, np.array([tensor_q]), (bits @ whole)[tensor_q])]
        for axis, counts in ((1, by_row), (2, by_col)):
            if not counts.shape[0]:
                continue
            costs = counts @ bits.T  # (rows or cols, scales)
            scales = np.where(counts.any(axis=1), np.argmin(costs, axis=1), tensor_q)
            candidates.append((axis, scales, costs[np.arange(scales.size), scales].sum()))
        for axis, scales, payload in candidates:
            total = payload + 8 * len(side_bytes(scales))
            if best is None or total < best[0]:
                best = (total, shape_index, axis, scales)
    total, shape_index, axis, scales = best
    total += 8 * HEADER_BYTES + LANE_BITS * lane_count(kept.size)
    return Choice(shape_index, axis, scales.astype(np.uint8), width, float(total))
