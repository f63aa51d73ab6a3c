"""The parametric probability model of the entropy coder: discretized generalized Gaussians.

A context is a pair (shape index ``s``, scale index ``q``). Its model is the generalized
Gaussian density ``exp(-|x / α|^β)`` with ``β = SHAPES[s]`` and ``α = 2^(q / 4 - 6)``
(:data:`NUM_SCALES` scales, a quarter octave apart, from 2^-6 to 2^8), integrated over the unit
bins ``[k - 1/2, k + 1/2]`` of the integer codes ``k``. Its alphabet is ``-K .. K`` plus an
escape symbol standing for every code outside it, where ``K`` is the largest code whose
probability is at least ``2^-(PROB_BITS + 2)`` (at least 1, at most :data:`MAX_K`). The
probabilities become integer frequencies summing to ``2^PROB_BITS``, each at least 1.

Nothing of the tables is stored: the decoder rebuilds them from ``(s, q)``. They are built with
floating-point functions (``exp``, ``log``, ``lgamma``) that may round differently on another
platform, so the writer stores :func:`checksum` of the tables it used and the reader compares.

References
----------
Nadarajah, "A generalized normal distribution", J. Applied Statistics 32 (2005): the density
``β / (2 α Γ(1/β)) exp(-(|x| / α)^β)`` and its CDF through the regularized incomplete gamma
function ``P(1/β, (|x| / α)^β)``. Press et al., Numerical Recipes, 3rd ed., §6.2 (series and
Lentz continued fraction for the incomplete gamma function). rnnshrink ``methods.md`` §8.
"""

import functools
import math
import zlib

import numpy as np

PROB_BITS = 15
TOTAL = 1 << PROB_BITS
SHAPES = (0.5, 0.7, 1.0, 1.4, 2.0)
SCALES_PER_OCTAVE = 4
MIN_SCALE_LOG2 = -6
NUM_SCALES = SCALES_PER_OCTAVE * 14 + 1
MAX_K = 1024
_KEEP = 2.0 ** -(PROB_BITS + 2)  # smallest probability of a code inside the alphabet
_ITERATIONS = 60
_TINY = 1e-300


def scale(q):
    """The scale ``α`` of scale index ``q``."""
    return 2.0 ** (q / SCALES_PER_OCTAVE + MIN_SCALE_LOG2)


def upper_gamma(a, z):
    """Regularized upper incomplete gamma function ``Q(a, z)``.

    Parameters
    ----------
    a : float
        Positive.
    z : ndarray of shape (n,)
        Non-negative.

    Returns
    -------
    ndarray of shape (n,)
    """
    z = np.asarray(z, np.float64)
    found = np.empty_like(z)
    log_gamma = math.lgamma(a)
    series = z < a + 1.0
    zs = z[series]  # P(a, z) = z^a e^-z / Γ(a) Σ z^n / (a (a + 1) .. (a + n))
    term = np.full_like(zs, 1.0 / a)
    total = term.copy()
    for n in range(1, _ITERATIONS):
        term = term * zs / (a + n)
        total += term
    with np.errstate(divide="ignore"):
        prefix = np.exp(a * np.log(zs) - zs - log_gamma)
    found[series] = 1.0 - prefix * total
    zc = z[~series]  # Q(a, z) by the modified Lentz continued fraction
    b = zc + 1.0 - a
    c = np.full_like(zc, 1.0 / _TINY)
    d = 1.0 / b
    h = d.copy()
    for n in range(1, _ITERATIONS):
        an = -n * (n - a)
        b = b + 2.0
        d = an * d + b
        d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
        c = b + an / c
        c = np.where(np.abs(c) < _TINY, _TINY, c)
        h = h * d * c
    found[~series] = np.exp(a * np.log(zc) - zc - log_gamma) * h
    return np.clip(found, 0.0, 1.0)


def frequencies(probabilities, total=TOTAL):
    """Integer frequencies, each at least 1, summing to ``total``, close to ``p · total``.

    Every symbol gets 1 plus its share of the ``total - n`` remaining, rounded down; what
    rounding leaves goes one each to the largest remainders (ties to the lower index).

    Parameters
    ----------
    probabilities : ndarray of shape (n,)
        Non-negative, summing to 1; ``n < total``.

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    share = probabilities * (total - probabilities.size)
    floor = np.floor(share)
    found = 1 + floor.astype(np.int64)
    rest = total - int(found.sum())
    found[np.argsort(floor - share, kind="stable")[:rest]] += 1
    return found


@functools.lru_cache(maxsize=None)
def _shape_tables(shape_index):
    """``(K, frequencies)`` of every scale index of one shape (see :func:`table`)."""
    beta = SHAPES[shape_index]
    edges = np.arange(MAX_K + 1) + 0.5
    alphas = scale(np.arange(NUM_SCALES))[:, None]
    tails = upper_gamma(1.0 / beta, ((edges / alphas) ** beta).ravel()).reshape(alphas.size, -1)
    tables = []
    for tail in tails:  # tail[k] = P(|X| > k + 1/2)
        single = np.append(1.0 - tail[0], (tail[:-1] - tail[1:]) / 2)  # P(X = k), k >= 0
        K = int(min(MAX_K, max(1, np.count_nonzero(single[1:] >= _KEEP))))
        p = np.concatenate([single[K:0:-1], single[:K + 1], [tail[K]]])
        found = frequencies(p / p.sum())
        found.setflags(write=False)
        tables.append((K, found))
    return tuple(tables)


def table(shape_index, q):
    """The alphabet bound and frequencies of context ``(shape_index, q)``.

    Returns
    -------
    K : int
    frequencies : ndarray of int64, shape (2 K + 2,)
        Of the codes ``-K .. K``, then of the escape symbol; they sum to :data:`TOTAL`.
    """
    return _shape_tables(shape_index)[q]


def checksum(shape_index, scales):
    """CRC-32 of the frequency tables of the contexts ``(shape_index, q)``, ``q`` in ``scales``."""
    crc = 0
    for q in scales:
        crc = zlib.crc32(table(shape_index, int(q))[1].astype("<i4").tobytes(), crc)
    return crc


@functools.lru_cache(maxsize=None)
def _magnitude_bits(shape_index, width):
    """(NUM_SCALES, MAX_K + 2) bits of a code of magnitude ``m`` (column ``m``; the last column:
    any magnitude beyond :data:`MAX_K`), escapes costing ``8 width`` bits more."""
    found = np.empty((NUM_SCALES, MAX_K + 2))
    for q, (K, freqs) in enumerate(_shape_tables(shape_index)):
        bits = PROB_BITS - np.log2(freqs)
        signed = (bits[K:2 * K + 1] + bits[K::-1]) / 2  # the mean of +m and -m
        found[q, :K + 1] = signed
        found[q, K + 1:] = bits[-1] + 8 * width
    found.setflags(write=False)
    return found


def magnitude_bits(shape_index, width, limit):
    """Bits each context spends on a code of each magnitude ``0 .. limit``.

    Parameters
    ----------
    shape_index : int
    width : int
        Bytes an escaped code is stored in.
    limit : int
        Largest magnitude asked for, at most ``MAX_K + 1`` (which then stands for every larger
        magnitude: all are escapes).

    Returns
    -------
    ndarray of shape (NUM_SCALES, limit + 1)
    """
    return _magnitude_bits(shape_index, width)[:, :limit + 1]
