"""The encoder's choice of model for one matrix of codes, and the size that choice codes to.

The candidates: each shape of :data:`~rnnshrink.coding.tables.SHAPES`, with one scale for the
whole matrix (``"tensor"``), one per row (``"row"``), one per column (``"col"``), or the sum of
a row scale and a column offset (``"row+col"``, for step maps whose code spread varies along
both). For each, the best scale of every row / column is read off histograms of code
magnitudes (counted once) times the bits each context spends per magnitude; the side
information (the scale indices, packed by :func:`~rnnshrink.coding.packing.pack_bytes`) is
counted at its packed size. The candidate with the fewest bits wins, so no frequency table is
ever stored.

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
from .tables import MAX_K, NUM_SCALES, SHAPES, magnitude_bits

AXES = ("tensor", "row", "col", "row+col")
OFFSETS = np.arange(-16, 17)  # column offsets of the row + column model, in scale steps
HEADER_BYTES = 8
LANE_BITS = 24  # bits a lane's final state holds beyond the ideal code length, on average
_CHUNK = 1 << 20  # entries per pass when counting
_JOINT_BINS = 1 << 23  # largest histogram per column and row scale


@dataclass(frozen=True)
class Choice:
    """A chosen model: shape index, axis (index into :data:`AXES`), scale index per row /
    column (one for ``"tensor"``; for ``"row+col"`` the rows' then the columns' int8 offsets),
    escape width in bytes, and the estimated size in bits."""

    shape_index: int
    axis: int
    scales: np.ndarray
    width: int
    bits: float


def escape_width(largest):
    """Bytes per escaped code when the largest code magnitude is ``largest``: 1, 2 or 4."""
    return 1 if largest <= 2**7 - 1 else 2 if largest <= 2**15 - 1 else 4


def _magnitudes(codes, mask, limit):
    """``(first row, magnitudes)`` of runs of rows: ``min(|code|, limit)``, ``limit + 1`` where
    the mask drops the entry."""
    stride = max(1, _CHUNK // max(codes.shape[1], 1))
    for start in range(0, codes.shape[0], stride):
        part = np.minimum(np.abs(codes[start:start + stride].astype(np.int64)), limit)
        if mask is not None:
            part[~mask[start:start + stride]] = limit + 1
        yield start, part


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
    for start, part in _magnitudes(codes, mask, limit):
        count = part.shape[0]
        index = part + (np.arange(count) * width)[:, None]
        by_row[start:start + count] = np.bincount(index.ravel(), minlength=count * width) \
            .reshape(count, width)
        by_col += np.bincount((part + col_offsets).ravel(), minlength=cols * width) \
            .reshape(cols, width)
    return by_row[:, :-1], by_col[:, :-1]


def joint_histogram(codes, mask, limit, row_class, classes):
    """Counts of the kept codes' magnitudes per column and class of their row.

    Parameters
    ----------
    codes, mask, limit
        As for :func:`histograms`.
    row_class : ndarray of int, shape (rows,)
        In ``0 .. classes - 1``.
    classes : int

    Returns
    -------
    ndarray of int64, shape (cols, classes, limit + 1)
    """
    cols, width = codes.shape[1], limit + 2
    found = np.zeros(cols * classes * width, np.int64)
    col_offsets = np.arange(cols) * classes * width
    for start, part in _magnitudes(codes, mask, limit):
        keys = col_offsets + (row_class[start:start + part.shape[0]] * width)[:, None]
        found += np.bincount((part + keys).ravel(), minlength=found.size)
    return found.reshape(cols, classes, width)[:, :, :-1]


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
    largest = max(int(kept.max(initial=0)), -int(kept.min(initial=0)))
    limit, width = min(largest, MAX_K + 1), escape_width(largest)
    by_row, by_col = histograms(codes, mask, limit)
    candidates, row_fits = [], []
    for shape_index in range(len(SHAPES)):
        found = _separate_candidates(magnitude_bits(shape_index, width, limit), by_row, by_col)
        candidates += [(shape_index, axis, scales, payload) for axis, scales, payload in found]
        row_fits += [(payload, scales) for axis, scales, payload in found if axis == 1]
    if row_fits and codes.shape[1] and kept.size:
        row_scales = min(row_fits, key=lambda fit: fit[0])[1]
        candidates += [(shape_index, 3, scales, payload) for shape_index, scales, payload
                       in _joint_candidates(codes, mask, limit, width, row_scales)]
    total, shape_index, axis, scales = min(
        ((payload + 8 * len(side_bytes(scales)), shape_index, axis, scales)
         for shape_index, axis, scales, payload in candidates), key=lambda found: found[:3])
    total += 8 * HEADER_BYTES + LANE_BITS * lane_count(kept.size)
    return Choice(shape_index, axis, scales.astype(np.uint8), width, float(total))


def _separate_candidates(bits, by_row, by_col):
    """``(axis, scales, payload bits)`` of one scale for the matrix, one per row, one per
    column: each the scale of fewest bits, ``bits`` (scales, magnitudes) per magnitude."""
    whole = by_row.sum(axis=0)
    tensor_q = int(np.argmin(bits @ whole))
    found = [(0, np.array([tensor_q]), (bits @ whole)[tensor_q])]
    for axis, counts in ((1, by_row), (2, by_col)):
        if counts.shape[0]:
            costs = counts @ bits.T  # (rows or cols, scales)
            scales = np.where(counts.any(axis=1), np.argmin(costs, axis=1), tensor_q)
            found.append((axis, scales, costs[np.arange(scales.size), scales].sum()))
    return found


def _joint_candidates(codes, mask, limit, width, row_scales):
    """``(shape index, scales, payload bits)`` of the row + column model for every shape.

    Entry ``(i, j)`` is in the context ``clip(r_i + c_j)``: ``r`` the given row scales (the best
    per-row fit), ``c_j`` the column offset in :data:`OFFSETS` of fewest bits, read off one
    histogram of magnitudes per column and row scale. ``scales`` holds ``r`` then ``c`` (int8
    as uint8). None when that histogram would exceed :data:`_JOINT_BINS`.
    """
    classes, row_class = np.unique(row_scales, return_inverse=True)
    cols = codes.shape[1]
    if cols * classes.size * (limit + 1) > _JOINT_BINS:
        return []
    joint = joint_histogram(codes, mask, limit, row_class, classes.size)
    joint = joint.reshape(cols, -1).astype(np.float64)  # (cols, classes * magnitudes)
    present = joint.any(axis=1)
    contexts = np.clip(classes[:, None] + OFFSETS, 0, NUM_SCALES - 1)  # (classes, offsets)
    found = []
    for shape_index in range(len(SHAPES)):
        bits = magnitude_bits(shape_index, width, limit)[contexts]  # (classes, offsets, mags)
        costs = joint @ bits.transpose(0, 2, 1).reshape(-1, OFFSETS.size)  # (cols, offsets)
        best = np.where(present, np.argmin(costs, axis=1), OFFSETS.size // 2)
        offsets = OFFSETS[best].astype(np.int8).view(np.uint8)
        found.append((shape_index, np.concatenate([row_scales.astype(np.uint8), offsets]),
                      costs[np.arange(cols), best].sum()))
    return found
