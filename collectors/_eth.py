"""Ethereum address validation for config: hex form and the EIP-55 mixed-case checksum (Keccak-256).

Keccak-256 is the original Keccak padding, not hashlib's SHA3-256; config validation hashes a few
addresses, so a small pure-Python permutation is enough and spares a native dependency.
"""

from __future__ import annotations

import re

__all__ = ["checksum_address", "keccak256", "validate_address"]

_RC = (
    0x0000000000000001, 0x0000000000008082, 0x800000000000808A, 0x8000000080008000,
    0x000000000000808B, 0x0000000080000001, 0x8000000080008081, 0x8000000000008009,
    0x000000000000008A, 0x0000000000000088, 0x0000000080008009, 0x000000008000000A,
    0x000000008000808B, 0x800000000000008B, 0x8000000000008089, 0x8000000000008003,
    0x8000000000008002, 0x8000000000000080, 0x000000000000800A, 0x800000008000000A,
    0x8000000080008081, 0x8000000000008080, 0x0000000080000001, 0x8000000080008008,
)
_ROT = (
    (0, 36, 3, 41, 18), (1, 44, 10, 45, 2), (62, 6, 43, 15, 61), (28, 55, 25, 21, 56), (27, 20, 39, 8, 14),
)
_MASK = (1 << 64) - 1
_RATE = 136  # bytes, for a 256-bit output


def _rol(x: int, n: int) -> int:
    return ((x << n) | (x >> (64 - n))) & _MASK if n else x


def _keccak_f(a: list[list[int]]) -> None:
    for rc in _RC:
        c = [a[x][0] ^ a[x][1] ^ a[x][2] ^ a[x][3] ^ a[x][4] for x in range(5)]
        d = [c[(x - 1) % 5] ^ _rol(c[(x + 1) % 5], 1) for x in range(5)]
        for x in range(5):
            for y in range(5):
                a[x][y] ^= d[x]
        b = [[0] * 5 for _ in range(5)]
        for x in range(5):
            for y in range(5):
                b[y][(2 * x + 3 * y) % 5] = _rol(a[x][y], _ROT[x][y])
        for x in range(5):
            for y in range(5):
                a[x][y] = b[x][y] ^ ((~b[(x + 1) % 5][y]) & b[(x + 2) % 5][y])
        a[0][0] ^= rc


def keccak256(data: bytes) -> bytes:
    padded = bytearray(data)
    padded.append(0x01)
    while len(padded) % _RATE:
        padded.append(0)
    padded[-1] |= 0x80
    a = [[0] * 5 for _ in range(5)]
    for off in range(0, len(padded), _RATE):
        block = padded[off:off + _RATE]
        for i in range(_RATE // 8):
            a[i % 5][i // 5] ^= int.from_bytes(block[8 * i:8 * i + 8], "little")
        _keccak_f(a)
    out = b"".join(a[i % 5][i // 5].to_bytes(8, "little") for i in range(_RATE // 8))
    return out[:32]


_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")


def checksum_address(address: str) -> str:
    """The EIP-55 form of a 0x-prefixed 40-hex-digit address."""
    lower = address[2:].lower()
    digest = keccak256(lower.encode("ascii")).hex()
    return "0x" + "".join(ch.upper() if int(digest[i], 16) >= 8 else ch for i, ch in enumerate(lower))


def validate_address(value: str) -> str:
    """The checksummed address; ValueError when it is not 20 bytes of hex or its mixed case is wrong.

    All-lowercase and all-uppercase addresses carry no checksum and are accepted as such.
    """
    if not isinstance(value, str) or not _ADDRESS_RE.match(value):
        raise ValueError(f"{str(value)[:50]!r} is not an address: expected 0x and 40 hex digits")
    body = value[2:]
    expected = checksum_address(value)
    if body != body.lower() and body != body.upper() and value != expected:
        raise ValueError(f"{value} fails its EIP-55 checksum (a typo?); the checksummed form is {expected}")
    return expected
