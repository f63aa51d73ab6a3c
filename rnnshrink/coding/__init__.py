"""Entropy coding of integer weight codes: interleaved rANS under a parametric model.

A leaf package: it imports NumPy and the standard library only, nothing else of rnnshrink.

* :func:`encode` ``(codes, mask=None) -> CodedMatrix`` chooses the model (a discretized
  generalized Gaussian of one of a few shapes, its scale per matrix, row or column), codes the
  kept codes with interleaved rANS and checks that they decode back exactly;
* :func:`decode` ``(coded) -> codes`` rebuilds the frequency tables from the side information
  (no table is stored; a CRC-32 guards against platforms that would build them differently);
* :func:`estimate_bits` ``(codes, mask=None)`` is the size :func:`encode` would reach, without
  running the coder (for rate allocation);
* :func:`pack_bytes` / :func:`unpack_bytes` store small side arrays compactly.

References
----------
Duda, arXiv 1311.2540 (ANS); Giesen, arXiv 1402.3392 (interleaved rANS); Han, Mao & Dally,
"Deep Compression", ICLR 2016 (entropy-coded weights); rnnshrink ``methods.md`` §8.
"""

from .matrix import CodedMatrix, decode, encode, estimate_bits
from .packing import pack_bytes, unpack_bytes

__all__ = ["CodedMatrix", "decode", "encode", "estimate_bits", "pack_bytes", "unpack_bytes"]
