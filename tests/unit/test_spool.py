"""pymta.lib.spool: text past the memory limit goes to an unlinked file; reads give it back."""

from __future__ import annotations

import os

from pymta.lib.spool import Spool


def test_small_text_stays_in_memory(tmp_path):
    spool = Spool(tmp_path, memory=100)
    spool.write(b"hello ")
    spool.write(b"world")
    assert spool._fd == -1 and spool.size == 11
    assert spool.getvalue() == b"hello world"
    assert list(spool.chunks(6, size=2)) == [b"wo", b"rl", b"d"]
    assert os.listdir(tmp_path) == []


def test_big_text_goes_to_an_unlinked_file(tmp_path):
    spool = Spool(tmp_path, memory=100)
    parts = [bytes([65 + i]) * 70 for i in range(5)]
    for part in parts:
        spool.write(part)
    assert spool._fd >= 0 and not spool._mem  # spilled, memory given back
    assert os.listdir(tmp_path) == []  # O_TMPFILE: nothing to leave behind
    whole = b"".join(parts)
    assert spool.size == len(whole) and spool.getvalue() == whole
    assert b"".join(spool.chunks(0, size=33)) == whole
    assert spool.read(340, 100) == whole[340:]
    spool.close()
    assert spool.size == 0 and spool._fd == -1


def test_without_a_directory_everything_stays_in_memory():
    spool = Spool(None, memory=10)
    spool.write(b"x" * 50)
    assert spool._fd == -2 and spool.getvalue() == b"x" * 50
