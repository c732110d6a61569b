"""Open paths a user's rules name, confined to the user's own directories.

A rule may name folders, mbox files, LOGFILE, INCLUDERC, lock files and
shell redirections; each must stay under one of the ``Roots`` (the user's
home and Maildir).  A path is first made absolute and its ``..`` taken
away by name, then walked one component at a time from the root's
descriptor with ``openat(O_NOFOLLOW)``: a symbolic link on the way is read
(``readlinkat``), its target checked against the roots again, and the walk
starts over from there.  What the caller gets is a descriptor (or a
``/proc/self/fd/N/name`` path through one), so a link swapped in after the
check cannot redirect the write.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager

MAX_LINKS = 40  # as the kernel's own limit on links followed in one lookup
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    """The path leads outside the roots (or through too many links)."""


def fd_path(fd: int, name: str = "") -> str:
    """A path the kernel resolves through descriptor ``fd``, not through names."""
    return f"/proc/self/fd/{fd}/{name}" if name else f"/proc/self/fd/{fd}"


class Roots:
    """The directories rule paths may lie under; ``base`` makes names absolute."""

    def __init__(self, dirs) -> None:
        roots = []
        for d in dirs:
            if not d:
                continue
            d = os.path.normpath(os.path.abspath(os.fspath(d)))
            # the root itself may sit behind an admin's link (/home -> /usr/home)
            for form in (d, os.path.realpath(d)):
                if form not in [r for r, _ in roots]:
                    roots.append((form, os.path.realpath(d)))
        # deepest first: the shortest walk
        self.roots = sorted(roots, key=lambda r: -len(r[0]))

    def __bool__(self) -> bool:
        return bool(self.roots)

    def describe(self) -> str:
        return " or ".join(sorted({real for _, real in self.roots})) or "nothing"

    def _locate(self, path: str) -> tuple[str, list[str]]:
        """(the real root, components below it) for an absolute path, by name."""
        path = os.path.normpath(path)
        for name, real in self.roots:
            if path == name:
                return real, []
            if path.startswith(name.rstrip("/") + "/"):
                return real, [p for p in path[len(name) :].split("/") if p]
        raise Refused(f"{path} is outside {self.describe()}")

    def _walk(self, path: str, *, create: bool = False, last: str = "dir"):
        """Walk to ``path``; returns (descriptor of the directory holding the
        last component, that component) for ``last="parent"``, else the
        descriptor of the directory ``path`` itself.  Links are followed
        only while they stay inside the roots."""
        if "\x00" in path:
            raise Refused("NUL in path")
        path = os.path.abspath(path)
        for _ in range(MAX_LINKS):
            root, parts = self._locate(path)
            if last == "parent" and not parts:
                raise Refused(f"{path} is a directory of its own, not a file under it")
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            walked = [root]
            try:
                for i, name in enumerate(parts):
                    final = i == len(parts) - 1
                    if final and last == "parent":
                        try:
                            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                        except FileNotFoundError:
                            st = None
                        if st is None or not stat.S_ISLNK(st.st_mode):
                            found, fd = fd, -1
                            return found, name
                    else:
                        try:
                            nfd = self._open_dir(fd, name, create)
                        except _IsLink:
                            pass
                        else:
                            os.close(fd)
                            fd = nfd
                            walked.append(name)
                            continue
                    # a symbolic link: check where it leads, then start over
                    target = os.readlink(name, dir_fd=fd)
                    path = os.path.normpath(os.path.join(*walked, target, *parts[i + 1 :]))
                    break
                else:
                    found, fd = fd, -1
                    return found
            finally:
                if fd >= 0:
                    os.close(fd)
        raise Refused(f"{path}: too many symbolic links")

    @staticmethod
    def _open_dir(fd: int, name: str, create: bool) -> int:
        for attempt in range(2):
            try:
                return os.open(name, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create or attempt:
                    raise
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise _IsLink() from None
                raise
        raise AssertionError("unreachable")

    def open_dir(self, path: str, create: bool = False) -> int:
        """A descriptor of directory ``path`` (made, 0700, with its parents when ``create``)."""
        return self._walk(path, create=create)

    def open(self, path: str, flags: int, mode: int = 0o600, *, create_dirs: bool = False) -> int:
        """A descriptor of the regular file ``path``; devices and FIFOs are refused."""
        dir_fd, name = self._walk(path, create=create_dirs, last="parent")
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Refused(f"{path} is not a regular file")
        return fd

    def opener(self):
        """For ``open(path, opener=...)``: read a file only through the confined walk."""
        return lambda path, flags: self.open(path, flags)

    def check(self, path: str) -> None:
        """Raise Refused unless ``path`` (which need not exist) lies under the roots."""
        if not self._locate(os.path.abspath(path))[1]:
            return  # a root itself
        try:
            dir_fd, _ = self._walk(path, last="parent")
        except FileNotFoundError:
            return  # a missing directory on the way: nothing can be written there
        os.close(dir_fd)

    def open_parent(self, path: str, create_dirs: bool = False) -> tuple[int, str]:
        """(descriptor of the directory holding file ``path``, its name there);
        a link in the file's place is followed only when it stays inside."""
        return self._walk(path, create=create_dirs, last="parent")

    @contextmanager
    def parent(self, path: str, create_dirs: bool = False):
        """Yield ``/proc/self/fd/N/name`` for the file ``path``: code that opens it
        with O_NOFOLLOW (mbox.append, DotLock) stays in the checked directory."""
        dir_fd, name = self.open_parent(path, create_dirs)
        try:
            yield fd_path(dir_fd, name)
        finally:
            os.close(dir_fd)

    def contains(self, path: str) -> bool:
        """Does ``path`` lie under a root by name (no file-system access)?"""
        try:
            self._locate(os.path.abspath(path))
            return True
        except Refused:
            return False


class _IsLink(Exception):
    pass
