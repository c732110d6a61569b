"""Small file-system steps the queue and the Maildir code share."""

from __future__ import annotations

import os


def fsync_dir(path) -> None:
    """Make a rename or unlink in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
