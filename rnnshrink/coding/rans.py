"""Interleaved rANS, vectorized over lanes with NumPy.

Symbol ``i`` of a stream of ``n`` goes to lane ``i % lanes`` at step ``i // lanes``: one step
codes up to ``lanes`` consecutive symbols, one per lane, with whole-array operations. Each lane
is an rANS coder with a 32-bit state ``x`` in ``[2^16, 2^32)``, probabilities of
``PROB_BITS`` (15) bits and 16-bit renormalization words, so a symbol moves at most one word.

* The encoder runs the steps backwards from lane states ``2^16``: a lane whose state would
  leave the interval after coding symbol ``s`` (``x >= f_s 2^(32 - PROB_BITS)``) first emits
  its low 16 bits; then ``x <- (x // f_s) 2^PROB_BITS + x mod f_s + c_s``.
* The decoder runs the steps forwards from the encoder's final states:
  ``slot = x mod 2^PROB_BITS`` names the symbol ``s`` with ``c_s <= slot < c_s + f_s``,
  ``x <- f_s (x >> PROB_BITS) + slot - c_s``, and a lane whose state fell below ``2^16``
  reads the next word: ``x <- x 2^16 + word``.

Decoding step ``t`` thus reads exactly the words encoding step ``t`` emitted, in the same lanes,
so the stream is the encoder's per-step words (lanes ascending) in forward step order; the lane
states of both sides move in lockstep and the decoder ends where the encoder began (``2^16``).
The stored stream is the ``lanes`` final states (uint32, little-endian) then the words (uint16,
little-endian). Each lane costs about 3 bytes over the ideal code length (its final state), so
lanes are :data:`SYMBOLS_PER_LANE` symbols apart, at most :data:`MAX_LANES`.

References
----------
Duda, "Asymmetric numeral systems: entropy coding combining speed of Huffman coding with
compression rate of arithmetic coding", arXiv 1311.2540 (2013), rANS §3. Giesen, "Interleaved
entropy coders", arXiv 1402.3392 (2014): lanes sharing one stream, words ordered so that each
decoder knows when to read. rnnshrink ``methods.md`` §8.
"""

import numpy as np

from .tables import PROB_BITS, TOTAL

STATE_LOW = 1 << 16
SYMBOLS_PER_LANE = 2048
MAX_LANES = 16384
_BLOCK = 1 << 20  # symbols whose tables are gathered at once


def lane_count(n):
    """Lanes for a stream of ``n`` symbols (0 for none)."""
    return 0 if n == 0 else int(min(MAX_LANES, max(1, n // SYMBOLS_PER_LANE)))


def _blocks(n, lanes, reverse=False):
    """``(start, stop)`` of runs of whole steps covering ``0 .. n``."""
    size = max(1, _BLOCK // max(lanes, 1)) * max(lanes, 1)
    found = [(start, min(start + size, n)) for start in range(0, n, size)]
    return found[::-1] if reverse else found


def encode(symbols, freq, cum):
    """Code a symbol stream.

    Parameters
    ----------
    symbols : ndarray of int, shape (n,)
        Indices into ``freq`` and ``cum``.
    freq, cum : ndarray of int, shape (alphabet,)
        Frequency of each symbol and the sum of the frequencies before it in its context
        (``0 <= cum``, ``cum + freq <= 2^PROB_BITS``, ``freq >= 1``).

    Returns
    -------
    bytes
        The lane states (``lane_count(n)`` uint32) then the words (uint16), little-endian.
    """
    n = symbols.size
    lanes = lane_count(n)
    x = np.full(lanes, STATE_LOW, np.int64)  # states < 2^32: int64 arithmetic is exact
    chunks = []
    freq, cum = np.asarray(freq, np.int64), np.asarray(cum, np.int64)
    for start, stop in _blocks(n, lanes, reverse=True):
        block = symbols[start:stop]
        f_block, c_block = freq[block], cum[block]
        limit_block, rest_block = f_block << (32 - PROB_BITS), TOTAL - f_block
        for step in range(start + (stop - start - 1) // lanes * lanes, start - 1, -lanes):
            here = slice(step - start, min(step + lanes, stop) - start)
            states = x[:here.stop - here.start]
            out = np.nonzero(states >= limit_block[here])[0]
            chunks.append(states[out].astype(np.uint16))
            states[out] >>= 16
            quotient = states // f_block[here]  # x' = (x // f) 2^n + x mod f + c
            quotient *= rest_block[here]
            states += quotient
            states += c_block[here]
    words = np.concatenate(chunks[::-1]) if chunks else np.empty(0, np.uint16)
    return x.astype("<u4").tobytes() + words.astype("<u2").tobytes()


def decode_table(freq, cum):
    """The decoder's lookup tables of contexts whose alphabets lie one after another.

    Parameters
    ----------
    freq, cum : ndarray of int, shape (alphabet,)
        As for :func:`encode`; the frequencies of each context sum to ``2^PROB_BITS``.

    Returns
    -------
    step : ndarray of int64, shape (contexts * 2^PROB_BITS,)
        Entry ``context * 2^PROB_BITS + slot``: ``(slot - cum) << 16 | freq`` of the symbol
        that holds ``slot``.
    symbol : ndarray of int32, same shape
        That symbol.
    """
    freq, cum = np.asarray(freq, np.int64), np.asarray(cum, np.int64)
    symbol = np.repeat(np.arange(freq.size, dtype=np.int32), freq)
    slot = np.arange(symbol.size) % TOTAL
    return ((slot - cum[symbol]) << 16) | freq[symbol], symbol


def decode(stream, tables, count, contexts=None):
    """Decode ``count`` symbols.

    Parameters
    ----------
    stream : bytes
        What :func:`encode` returned.
    tables : tuple of ndarray
        :func:`decode_table` of the encoder's ``freq`` and ``cum``.
    count : int
    contexts : ndarray of int, shape (count,), optional
        Context of each symbol; all in context 0 when omitted.

    Returns
    -------
    ndarray of int32, shape (count,)
        The symbols.

    Raises
    ------
    ValueError
        The stream is too short, too long or does not end in the encoder's first states.
    """
    lanes = lane_count(count)
    if len(stream) < 4 * lanes or (len(stream) - 4 * lanes) % 2:
        raise ValueError("coded stream has the wrong length")
    step_table, symbol_table = tables
    x = np.frombuffer(stream, "<u4", lanes).astype(np.int64)
    words = np.frombuffer(stream, "<u2", offset=4 * lanes).astype(np.int64)
    found = np.empty(count, np.int32)  # the table index of each symbol, then the symbol
    read = 0
    for start, stop in _blocks(count, lanes):
        base = None if contexts is None else contexts[start:stop].astype(np.int64) << PROB_BITS
        for step in range(start, stop, lanes):
            end = min(step + lanes, stop)
            states = x[:end - step]
            index = states & (TOTAL - 1)
            if base is not None:
                index += base[step - start:end - start]
            entry = step_table[index]
            states >>= PROB_BITS
            states *= entry & 0xFFFF
            entry >>= 16
            states += entry
            found[step:end] = index
            refill = np.nonzero(states < STATE_LOW)[0]
            if read + refill.size > words.size:
                raise ValueError("coded stream ends early")
            states[refill] = (states[refill] << 16) | words[read:read + refill.size]
            read += refill.size
    if read != words.size or np.any(x != STATE_LOW):
        raise ValueError("coded stream does not decode to its end")
    for start in range(0, count, _BLOCK):  # table indices to symbols in place
        found[start:start + _BLOCK] = symbol_table[found[start:start + _BLOCK]]
    return found
