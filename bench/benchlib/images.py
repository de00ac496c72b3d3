"""Init images for the big img2img body: real PNG files of random pixels (stored deflate
blocks, so building them is cheap), each padded with a tEXt chunk to an exact size so that
four base64 strings total exactly 32 MiB."""

from __future__ import annotations

import base64
import random
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def noise_png(size: int, seed: int, width: int = 1024) -> bytes:
    """A valid RGB PNG of exactly `size` bytes (size >= ~1 KiB) of seeded random pixels."""
    rng = random.Random(seed)
    row = 1 + 3 * width  # filter byte + RGB
    fixed = len(SIGNATURE) + 25 + 12 + 12 + 12 + len(b"Comment\0")  # IHDR, IDAT, tEXt, IEND overhead
    # Stored deflate adds 5 bytes per 65535-byte block plus the zlib header and checksum.
    height = 1
    while True:
        raw = (height + 1) * row
        if fixed + raw + 5 * (raw // 65535 + 1) + 6 + 64 > size:
            break
        height += 1
    rows = b"".join(b"\x00" + rng.randbytes(3 * width) for _ in range(height))
    idat = zlib.compress(rows, 0)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    head = SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
    tail = _chunk(b"IEND", b"")
    pad = size - len(head) - len(tail) - 12 - len(b"Comment\0")
    if pad < 0:
        raise ValueError(f"cannot build a PNG of {size} bytes")
    text = _chunk(b"tEXt", b"Comment\0" + b"p" * pad)
    png = head + text + tail
    assert len(png) == size, (len(png), size)
    return png


def init_images(total_base64_bytes: int, count: int = 4, seed: int = 5) -> list[str]:
    """`count` base64 PNG strings whose lengths add up to `total_base64_bytes`."""
    each_b64 = total_base64_bytes // count
    assert each_b64 % 4 == 0
    return [base64.b64encode(noise_png(each_b64 // 4 * 3, seed + i)).decode() for i in range(count)]
