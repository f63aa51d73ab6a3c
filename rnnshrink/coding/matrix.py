"""A matrix of integer codes, entropy coded: :class:`CodedMatrix`, :func:`encode`, :func:`decode`.

What is stored, every byte counted in :attr:`CodedMatrix.nbytes`:

``header`` (8 bytes)
    ``<BBBBI``: version (1), shape index, axis (0 tensor, 1 row, 2 column, 3 row + column), escape width in
    bytes (1, 2 or 4), CRC-32 of the frequency tables used (:func:`tables.checksum`).
``side``
    The scale index of the matrix, of each row or of each column (uint8), or those of the rows
    followed by an int8 offset per column (axis 3), packed by
    :func:`~rnnshrink.coding.packing.pack_bytes`.
``escapes``
    The codes outside their context's alphabet, in stream order, little-endian signed integers
    of the escape width.
``stream``
    The rANS lane states and words (:func:`rans.encode`).

The symbols are the kept codes in row-major order (all codes, or those where ``mask`` is true);
symbol ``(i, j)`` is coded in the context of the matrix's scale index, its row's, its column's,
or ``clip(r_i + c_j, 0, 56)``.
The mask itself is the caller's to store.

References
----------
Duda, arXiv 1311.2540 (rANS); Giesen, arXiv 1402.3392 (interleaved lanes); Han, Mao & Dally,
"Deep Compression", arXiv 1510.00149; rnnshrink ``methods.md`` §8.
"""

import struct
from dataclasses import dataclass, field

import numpy as np

from . import rans
from .choice import AXES, HEADER_BYTES, choose, side_bytes
from .packing import unpack_bytes
from .tables import NUM_SCALES, SHAPES, checksum, table

VERSION = 1
_HEADER = "<BBBBI"
_PARTS = ("header", "side", "escapes", "stream")
_CHUNK = 1 << 20
_NARROW = tuple(np.dtype(name) for name in ("int8", "int16", "int32", "uint8", "uint16"))


@dataclass(frozen=True)
class CodedMatrix:
    """The stored form of a matrix of integer codes (see the module docstring).

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)``.
    header, side, escapes, stream : bytes
    mask : ndarray of bool, shape (rows, cols), optional
        Which entries were coded; not counted here (its owner stores its index).
    """

    shape: tuple
    header: bytes
    side: bytes
    escapes: bytes
    stream: bytes
    mask: np.ndarray = field(default=None, compare=False, repr=False)

    @property
    def nbytes(self):
        """Every stored byte: header, side information, escapes and stream."""
        return sum(len(getattr(self, part)) for part in _PARTS)

    @property
    def count(self):
        """Number of coded symbols (kept entries)."""
        return int(np.prod(self.shape)) if self.mask is None else int(np.count_nonzero(self.mask))

    @property
    def fields(self):
        """``(version, shape_index, axis, escape_width, crc)`` of the header."""
        return struct.unpack(_HEADER, self.header)

    @property
    def beta(self):
        """Shape ``β`` of the generalized Gaussian model."""
        return SHAPES[self.fields[1]]

    @property
    def axis(self):
        """``"tensor"``, ``"row"``, ``"col"`` or ``"row+col"``: what the scales belong to."""
        return AXES[self.fields[2]]

    @property
    def scales(self):
        """The scale indices, uint8 of shape (1,), (rows,), (cols,) or (rows + cols,) (the
        rows' scale indices, then the columns' int8 offsets)."""
        return np.frombuffer(unpack_bytes(self.side), np.uint8)

    def to_arrays(self):
        """The stored parts as uint8 arrays, ``{"header", "side", "escapes", "stream"}``."""
        return {part: np.frombuffer(getattr(self, part), np.uint8) for part in _PARTS}

    @classmethod
    def from_arrays(cls, arrays, shape, mask=None):
        """Inverse of :meth:`to_arrays`, given the matrix shape and mask."""
        parts = {part: np.asarray(arrays[part], np.uint8).tobytes() for part in _PARTS}
        return cls(tuple(int(n) for n in shape), mask=mask, **parts)


def checked_codes(codes, mask=None):
    """``codes`` as integers of at most 32 bits (int8, int16, uint8 and uint16 kept as they are,
    so no wider copy of them is made; others as int32) and ``mask`` as bool, validated.

    Raises
    ------
    ValueError
        Not a 2-D integer array within ``±(2^31 - 1)``, a mask of another shape, or nonzero codes
        outside the mask.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or not (np.issubdtype(codes.dtype, np.integer) or codes.dtype == bool):
        raise ValueError(f"codes must be a 2-D integer array, got {codes.dtype} of shape {codes.shape}")
    if codes.size and (codes.min() < -(2**31 - 1) or codes.max() > 2**31 - 1):
        raise ValueError("codes must lie within ±(2^31 - 1)")
    if codes.dtype not in _NARROW:
        codes = codes.astype(np.int32)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != codes.shape:
            raise ValueError(f"mask of shape {mask.shape} does not fit codes {codes.shape}")
        if np.any(codes[~mask]):
            raise ValueError("codes outside the mask must be zero")
    return codes, mask


def estimate_bits(codes, mask=None):
    """Bits :func:`encode` would store for ``codes``, without running the coder.

    The ideal code length ``-Σ log2 p`` of the kept codes under the model :func:`encode`
    chooses, plus the header, side information, escapes and ~24 bits per rANS lane.
    """
    return choose(*checked_codes(codes, mask)).bits


def encode(codes, mask=None):
    """Entropy-code integer codes, checking that they decode back exactly.

    Parameters
    ----------
    codes : ndarray of int, shape (rows, cols)
        Within ``±(2^31 - 1)``; either dimension may be 0.
    mask : ndarray of bool, shape (rows, cols), optional
        Entries to code (those of a pruned matrix); the others must be zero.

    Returns
    -------
    CodedMatrix

    Raises
    ------
    ValueError
        Invalid codes or mask (see :func:`checked_codes`).
    RuntimeError
        The coded matrix does not decode to ``codes`` (an internal error; nothing is returned).
    """
    codes, mask = checked_codes(codes, mask)
    choice = choose(codes, mask)
    used, contexts = _contexts(choice.axis, choice.scales, codes.shape, mask)
    K, starts, freq, cum = _flat_tables(choice.shape_index, used)
    values = codes.ravel() if mask is None else codes[mask]
    symbols = np.empty(values.size, np.uint16 if freq.size <= 2 ** 16 else np.int32)
    escapes = []
    for begin in range(0, values.size, _CHUNK):  # in chunks: no full-size int64 temporaries
        part = values[begin:begin + _CHUNK].astype(np.int64)
        context = 0 if contexts is None else contexts[begin:begin + _CHUNK]
        bound, start = K[context], starts[context]
        inside = np.abs(part) <= bound
        symbols[begin:begin + part.size] = np.where(inside, start + part + bound,
                                                    start + 2 * bound + 1)
        escapes.append(part[~inside].astype(f"<i{choice.width}").tobytes())
    header = struct.pack(_HEADER, VERSION, choice.shape_index, choice.axis, choice.width,
                         checksum(choice.shape_index, used))
    stream = rans.encode(symbols, freq, cum)
    del symbols, contexts  # before the check decodes a second copy
    coded = CodedMatrix(codes.shape, header, side_bytes(choice.scales), b"".join(escapes),
                        stream, mask)
    if not np.array_equal(decode(coded), codes):
        raise RuntimeError("internal error: the entropy-coded matrix does not decode to its codes")
    return coded


def decode(coded):
    """The codes of a :class:`CodedMatrix`, int32 of shape ``coded.shape``.

    Raises
    ------
    ValueError
        A damaged header, side information, escape list or stream, or frequency tables that
        differ from the writer's (CRC mismatch: another platform's floating-point functions).
    """
    if len(coded.header) != HEADER_BYTES:
        raise ValueError("coded matrix header is not 8 bytes")
    version, shape_index, axis, width, crc = coded.fields
    if version != VERSION or shape_index >= len(SHAPES) or axis >= len(AXES) \
            or width not in (1, 2, 4):
        raise ValueError(f"unknown coded matrix header {coded.fields[:4]}")
    rows, cols = coded.shape
    scales = coded.scales
    if scales.size != (1, rows, cols, rows + cols)[axis] \
            or np.any(scales[:rows if axis == 3 else None] >= NUM_SCALES):
        raise ValueError("coded matrix side information does not fit its shape")
    used, contexts = _contexts(axis, scales, coded.shape, coded.mask)
    if checksum(shape_index, used) != crc:
        raise ValueError("the entropy coder's frequency tables rebuilt here differ from those "
                         "the file was written with (CRC mismatch): floating-point functions "
                         "round differently on this platform, or the file is damaged")
    K, starts, freq, cum = _flat_tables(shape_index, used)
    found = rans.decode(coded.stream, rans.decode_table(freq, cum), coded.count, contexts)
    del contexts
    values = np.concatenate([np.arange(-k, k + 2, dtype=np.int32) for k in K])  # k + 1: escape
    is_escape = np.zeros(values.size, bool)
    is_escape[starts[1:] - 1] = True
    escaped = np.empty(found.size, bool)
    for begin in range(0, found.size, _CHUNK):  # symbols to codes in place, a chunk at a time
        part = found[begin:begin + _CHUNK]
        escaped[begin:begin + _CHUNK] = is_escape[part]
        part[:] = values[part]
    if len(coded.escapes) != int(np.count_nonzero(escaped)) * width:
        raise ValueError("coded matrix escape list does not match its stream")
    found[escaped] = np.frombuffer(coded.escapes, f"<i{width}")
    if coded.mask is None:
        return found.reshape(rows, cols)
    codes = np.zeros(coded.shape, np.int32)
    codes[coded.mask] = found
    return codes


def _flat_tables(shape_index, used):
    """The tables of the contexts ``used`` one after another: ``K`` and ``starts`` per context
    (``starts`` has one more entry, the end), and ``freq``, ``cum`` per symbol."""
    tables = [table(shape_index, int(q)) for q in used]
    K = np.array([k for k, _ in tables], np.int64)
    freq = np.concatenate([f for _, f in tables])
    cum = np.concatenate([np.cumsum(f) - f for _, f in tables])
    starts = np.concatenate([[0], np.cumsum([f.size for _, f in tables])])
    return K, starts, freq, cum


def _contexts(axis, scales, shape, mask):
    """The scale indices in use (sorted) and the context of each kept entry, row-major: an
    index into them (None when the matrix has one scale)."""
    rows, cols = shape
    name = AXES[axis]
    if name == "tensor":
        return scales, None
    if name == "row+col":  # context clip(r_i + c_j): row scales, then int8 column offsets
        r = scales[:rows].astype(np.int16)
        c = scales[rows:].view(np.int8).astype(np.int16)
        used = np.unique(np.clip(np.unique(r)[:, None] + np.unique(c), 0, NUM_SCALES - 1))
        local = np.zeros(NUM_SCALES, np.uint16)
        local[used] = np.arange(used.size)
        if mask is None:
            sums = r[:, None] + c
            return used, local[np.clip(sums, 0, NUM_SCALES - 1, out=sums)].ravel()
        kept_rows, kept_cols = np.nonzero(mask)
        return used, local[np.clip(r[kept_rows] + c[kept_cols], 0, NUM_SCALES - 1)]
    used = np.unique(scales)
    local = np.searchsorted(used, scales).astype(np.uint16)
    if mask is None:
        return used, np.repeat(local, cols) if name == "row" else np.tile(local, rows)
    if name == "row":
        return used, np.repeat(local, np.count_nonzero(mask, axis=1))
    return used, local[np.nonzero(mask)[1]]
