"""Bare SMTP responder: the yardstick for pymta-smtpd's inetd start-up cost.

One session on stdin/stdout (inetd, ``systemd-socket-activate --inetd -a``),
no parsing beyond the verb, no queue, no imports beyond ``sys`` and ``os``:
whatever pymta-smtpd costs on top of this is pymail's own overhead.

    220 greeting; EHLO/HELO/MAIL/RCPT/RSET/NOOP -> 250; DATA -> 354, read to
    "<CRLF>.<CRLF>", then 250; QUIT -> 221 and exit; anything else -> 500.

Not a test: ``tests/bench/smtp_bench.py`` runs it.
"""

import os
import sys


def main():
    rfd, wfd = sys.stdin.fileno(), sys.stdout.fileno()

    def send(data):
        while data:
            data = data[os.write(wfd, data) :]

    send(b"220 bare.example.test ESMTP bare responder\r\n")
    buf = b""
    in_data = False
    while True:
        if in_data:
            end = buf.find(b"\r\n.\r\n")
            if end >= 0:
                buf = buf[end + 5 :]
                in_data = False
                send(b"250 2.0.0 Ok: queued\r\n")
                continue
            buf = buf[-4:]  # only a terminator straddling two reads matters
        else:
            eol = buf.find(b"\n")
            if eol >= 0:
                line, buf = buf[:eol], buf[eol + 1 :]
                verb = line.strip()[:4].upper()
                if verb in (b"EHLO", b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    send(b"250 2.0.0 Ok\r\n")
                elif verb == b"DATA":
                    send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    in_data = True
                    buf = b"\r\n" + buf  # so an empty body's "." matches too
                elif verb == b"QUIT":
                    send(b"221 2.0.0 Bye\r\n")
                    return 0
                else:
                    send(b"500 5.5.2 Error: command not recognized\r\n")
                continue
        try:
            chunk = os.read(rfd, 65536)
        except OSError:
            return 0
        if not chunk:
            return 0
        buf += chunk


if __name__ == "__main__":
    sys.exit(main())
