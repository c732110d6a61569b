"""Reading input against a size limit, counting while reading.

A size taken with ``fstat`` before the read says nothing about the bytes
the read will return: the owner of a file may grow it in between, and a
pipe has no size at all.  So the limit is counted on the bytes as they
arrive, and reading stops once the limit is passed -- at most
``limit + 1`` bytes are ever asked for.
"""

from __future__ import annotations


class TooBig(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} octets")
        self.limit = limit


def limited(chunks, limit: int):
    """Yield the chunks unchanged; raise TooBig as soon as they add up to more than ``limit``."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise TooBig(limit)
        yield chunk


def read_at_most(stream, limit: int, chunk_size: int = 1 << 16) -> bytes:
    """All of ``stream`` if it holds at most ``limit`` bytes, else TooBig (after reading limit + 1)."""
    data = bytearray()
    while len(data) <= limit:
        chunk = stream.read(min(chunk_size, limit + 1 - len(data)))
        if not chunk:
            return bytes(data)
        data += chunk
    raise TooBig(limit)
