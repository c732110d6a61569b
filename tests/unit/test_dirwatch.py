"""pymta.lib.dirwatch: one inotify instance, watches shared by subscribers, the fallback when out of watches."""

from __future__ import annotations

import ctypes
import errno
import os
import select

from pymta.lib import dirwatch


def _settle(w: dirwatch.Watcher) -> None:
    select.select([w.fd], [], [], 2.0)
    w.read()
    w.fire()


def test_subscribers_share_a_watch_and_hear_of_changes(tmp_path):
    for sub in ("new", "cur"):
        (tmp_path / sub).mkdir()
    w = dirwatch.Watcher()
    heard: list[str] = []
    paths = [str(tmp_path), str(tmp_path / "new"), str(tmp_path / "cur")]
    a = w.subscribe(paths, lambda: heard.append("a"), frozenset({"pymail-index"}))
    b = w.subscribe(paths, lambda: heard.append("b"), frozenset({"pymail-index"}))
    assert a is not None and b is not None
    assert len(w.wds) == 3  # three directories, one watch each for both subscribers
    (tmp_path / "new" / "1.M1P1.host").write_bytes(b"x")
    _settle(w)
    assert sorted(heard) == ["a", "b"]  # once each for the burst
    heard.clear()
    (tmp_path / ".pymail-index.tmp1").write_bytes(b"x")  # in the folder itself only the index counts
    assert not select.select([w.fd], [], [], 0.3)[0] or not w.read()
    os.rename(tmp_path / ".pymail-index.tmp1", tmp_path / "pymail-index")
    _settle(w)
    assert sorted(heard) == ["a", "b"]
    heard.clear()
    w.unsubscribe(a)
    os.rename(tmp_path / "new" / "1.M1P1.host", tmp_path / "cur" / "1.M1P1.host:2,S")
    _settle(w)
    assert heard == ["b"]
    w.unsubscribe(b)
    assert w.wds == {} and w.subs == {}
    w.close()


def test_out_of_watches_means_none_and_nothing_half_watched(tmp_path):
    w = dirwatch.Watcher()
    real = w.libc

    class Full:
        def inotify_add_watch(self, fd, path, mask):
            if path.endswith(b"cur"):
                ctypes.set_errno(errno.ENOSPC)
                return -1
            return real.inotify_add_watch(fd, path, mask)

        def inotify_rm_watch(self, fd, wd):
            return real.inotify_rm_watch(fd, wd)

    for sub in ("new", "cur"):
        (tmp_path / sub).mkdir()
    w.libc = Full()
    token = w.subscribe([str(tmp_path / "new"), str(tmp_path / "cur")], lambda: None)
    assert token is None and w.out_of_watches  # the caller polls
    assert w.wds == {} and w.subs == {}
    w.close()


def test_file_changes_counts_changes_to_its_files_only(tmp_path):
    users, aliases, other = tmp_path / "users", tmp_path / "aliases", tmp_path / "other"
    users.write_text("a\n")
    changes = dirwatch.FileChanges([users, aliases])
    try:
        assert changes.poll() == 0
        other.write_text("x")  # not one of its files
        assert changes.poll() == 0
        with open(users, "a") as fh:  # written in place
            fh.write("b\n")
        assert changes.poll() == 1
        assert changes.poll() == 1  # nothing new
        (tmp_path / "aliases.new").write_text("x: y\n")
        (tmp_path / "aliases.new").rename(aliases)  # moved into place (a file that did not exist)
        assert changes.poll() == 2
        users.unlink()
        assert changes.poll() == 3
    finally:
        changes.close()


def test_file_changes_breaks_for_good_when_the_directory_goes(tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    changes = dirwatch.FileChanges([folder / "users"])
    try:
        folder.rename(tmp_path / "elsewhere")
        assert changes.poll() == -1
        assert changes.poll() == -1
    finally:
        changes.close()


def test_file_changes_broken_instance_trusts_nothing(tmp_path):
    changes = dirwatch.FileChanges([tmp_path / "users"])
    os.close(changes.fd)  # a read now fails (EBADF)
    assert changes.poll() == -1
