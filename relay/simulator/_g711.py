"""G.711 μ-law and A-law codecs (ITU-T G.711) for 16-bit linear samples.

The stdlib's ``audioop`` would do this, but it is deprecated since Python 3.11
(importing it warns, and our tests turn warnings into errors) and gone in 3.13.
"""

from __future__ import annotations

from collections.abc import Iterable


_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
_ALAW_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def ulaw_encode_sample(sample: int) -> int:
    """Encode one 16-bit linear sample as a μ-law byte."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sign else sample, _ULAW_CLIP) + _ULAW_BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def ulaw_decode_sample(byte: int) -> int:
    """Decode one μ-law byte to a 16-bit linear sample."""
    byte = ~byte & 0xFF
    exponent = (byte >> 4) & 0x07
    magnitude = ((((byte & 0x0F) << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return -magnitude if byte & 0x80 else magnitude


def alaw_encode_sample(sample: int) -> int:
    """Encode one 16-bit linear sample as an A-law byte."""
    value = sample >> 3  # A-law quantises 13-bit samples.
    if value >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        value = -value - 1
    segment = next(
        (i for i, end in enumerate(_ALAW_SEGMENT_ENDS) if value <= end),
        len(_ALAW_SEGMENT_ENDS),
    )
    if segment >= len(_ALAW_SEGMENT_ENDS):
        return 0x7F ^ mask
    shift = 1 if segment < 2 else segment
    return ((segment << 4) | ((value >> shift) & 0x0F)) ^ mask


def alaw_decode_sample(byte: int) -> int:
    """Decode one A-law byte to a 16-bit linear sample."""
    byte ^= 0x55
    magnitude = (byte & 0x0F) << 4
    segment = (byte & 0x70) >> 4
    if segment == 0:
        magnitude += 8
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if byte & 0x80 else -magnitude


# Decoding is table-driven: every byte value maps to one sample.
ULAW_TABLE = tuple(ulaw_decode_sample(b) for b in range(256))
ALAW_TABLE = tuple(alaw_decode_sample(b) for b in range(256))


def ulaw_encode(samples: Iterable[int]) -> bytes:
    """Encode 16-bit linear samples as μ-law bytes."""
    return bytes(ulaw_encode_sample(s) for s in samples)


def alaw_encode(samples: Iterable[int]) -> bytes:
    """Encode 16-bit linear samples as A-law bytes."""
    return bytes(alaw_encode_sample(s) for s in samples)
