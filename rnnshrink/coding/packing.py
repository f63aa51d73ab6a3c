"""Small side information (scale indices, step exponents) stored as the smallest of raw bytes,
raw DEFLATE or raw LZMA2, behind one method byte.

Raw streams (no zlib / xz headers or checksums) because the arrays are a few hundred bytes,
where a container's header would cost more than the compression saves.

References
----------
RFC 1951 (DEFLATE); the xz / LZMA2 raw format of Python's :mod:`lzma` (``FORMAT_RAW``).
"""

import lzma
import zlib

_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 20}]


def _deflate(data):
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return packer.compress(data) + packer.flush()


def _inflate(body):
    unpacker = zlib.decompressobj(-15)
    found = unpacker.decompress(body) + unpacker.flush()
    if not unpacker.eof:
        raise ValueError("truncated deflate stream")
    return found


_METHODS = (  # method byte -> (pack, unpack)
    (bytes, bytes),
    (_deflate, _inflate),
    (lambda data: lzma.compress(data, lzma.FORMAT_RAW, filters=_LZMA_FILTERS),
     lambda body: lzma.decompress(body, lzma.FORMAT_RAW, filters=_LZMA_FILTERS)),
)


def pack_bytes(data):
    """``data`` as one method byte (0 raw, 1 raw DEFLATE, 2 raw LZMA2) and the shortest body."""
    data = bytes(data)
    bodies = [pack(data) for pack, _ in _METHODS]
    method = min(range(len(bodies)), key=lambda k: len(bodies[k]))
    return bytes([method]) + bodies[method]


def unpack_bytes(blob):
    """Inverse of :func:`pack_bytes`.

    Raises
    ------
    ValueError
        Empty blob, unknown method byte or a damaged body.
    """
    blob = bytes(blob)
    if not blob or blob[0] >= len(_METHODS):
        raise ValueError("side information has no known packing method")
    try:
        return _METHODS[blob[0]][1](blob[1:])
    except (zlib.error, lzma.LZMAError) as error:
        raise ValueError(f"damaged side information ({error})") from None
