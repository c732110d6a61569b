"""Line-end conversion for messages streamed from files and programs.

The queue and Maildir keep messages with LF line ends; programs may hand
us CRLF, and the wire (IMAP, POP3, SMTP) wants CRLF.  ``converted_chunks``
streams a file through a conversion, keeping a CR at the end of one read
for the next, so a CRLF split across two reads is still seen whole.
"""


def converted_chunks(stream, convert, chunk_size: int = 1 << 16):
    """Yield ``convert(piece)`` for the stream's bytes, never splitting a CRLF."""
    carry = b""
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            if carry:
                yield convert(carry)
            return
        chunk = carry + chunk
        carry = b""
        if chunk.endswith(b"\r"):
            chunk, carry = chunk[:-1], b"\r"
        yield convert(chunk)


def _to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def crlf_to_lf(stream, chunk_size: int = 1 << 16):
    """Yield the stream's bytes with CRLF turned into LF."""
    return converted_chunks(stream, _to_lf, chunk_size)
