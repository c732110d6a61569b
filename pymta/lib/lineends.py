"""Line-end conversion for messages read from programs (stdin).

The queue and Maildir keep messages with LF line ends; a program may hand
us CRLF.  This converts while streaming, including a CRLF split across
two reads.
"""


def crlf_to_lf(stream, chunk_size: int = 1 << 16):
    """Yield the stream's bytes with CRLF turned into LF."""
    carry = b""
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            if carry:
                yield carry
            return
        chunk = carry + chunk
        carry = b""
        if chunk.endswith(b"\r"):
            chunk, carry = chunk[:-1], b"\r"
        yield chunk.replace(b"\r\n", b"\n")
