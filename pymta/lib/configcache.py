"""The parsed config file, kept beside it, so that an inetd session skips tomllib.

Under inetd every connection starts a fresh Python, and parsing pymail.toml
costs the imports of tomllib (its regular expressions, datetime, string):
about 3 ms of a ~55 ms session.  ``lookup`` returns the document parsed
before when ``.NAME.cache`` beside the config holds exactly the same bytes
of the file (compared in full, so any edit misses), else None; ``store``
writes it after a parse.  Validation still runs on every load.

The cache is trusted like the config: it must belong to root or to the
config's owner and be writable by no one else, and is read without
following a link; anything else is ignored.  It is written (atomically,
with the config's permission bits, never wider) only by root or the
config's owner, and only where the folder allows: `pymail config check`
and `pymail init` make it as root; a daemon that cannot write it simply
parses.  ``marshal`` is built in: reading the cache imports nothing.
"""

from __future__ import annotations

import marshal
import os
from pathlib import Path

_VERSION = 1


def cache_path(config: Path) -> Path:
    return config.parent / f".{config.name}.cache"


def lookup(config: Path, raw: bytes, config_stat: os.stat_result) -> dict | None:
    try:
        fd = os.open(cache_path(config), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid not in (0, config_stat.st_uid) or st.st_mode & 0o022:
            return None
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            blob = fh.read(4 * len(raw) + 65536)
        version, cached_raw, doc = marshal.loads(blob)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    finally:
        if fd >= 0:
            os.close(fd)
    if version != _VERSION or cached_raw != raw or not isinstance(doc, dict):
        return None
    return doc


def store(config: Path, raw: bytes, doc: dict, config_stat: os.stat_result) -> bool:
    """Write the cache when we may (root or the config's owner); False when not written."""
    if os.geteuid() not in (0, config_stat.st_uid):
        return False
    try:
        blob = marshal.dumps((_VERSION, raw, doc))
    except ValueError:  # a value marshal cannot hold (a TOML date): parse every time
        return False
    target = cache_path(config)
    tmp = target.with_name(f"{target.name}.{os.getpid()}")
    mode = config_stat.st_mode & 0o644
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # not widened or narrowed by the umask
            if os.geteuid() == 0 and config_stat.st_uid != 0:
                os.fchown(fd, config_stat.st_uid, -1)
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    return True
