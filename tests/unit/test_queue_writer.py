"""The queue writer's commit: a message file has no name until it is
committed (O_TMPFILE, linked into new/), and where the file system has no
O_TMPFILE it is tmp/ID, renamed.  Either way a reader only ever sees whole
files in new/, and an aborted or failed message leaves nothing behind."""

from __future__ import annotations

import os

import pytest

from pymta.queue import Queue, QueueError

BIG = b"Subject: big\n\n" + b"x" * 100_000 + b"\n"  # over the writer's 64 KB buffer: the file exists before commit


def _queue(tmp_path, anonymous: bool = True) -> Queue:
    queue = Queue(tmp_path / "queue")
    queue.create()
    if not anonymous:
        queue._anonymous = False  # as on a file system without O_TMPFILE
    return queue


def _names(queue: Queue, sub: str) -> list[str]:
    return sorted(os.listdir(queue.path / sub))


def test_a_message_file_has_no_name_until_its_commit(tmp_path):
    queue = _queue(tmp_path)
    writer = queue.writer("a@b.example", ["c@d.example"])
    writer.write(BIG)
    assert writer.fd >= 0  # written to disk already ...
    assert _names(queue, "tmp") == [] and _names(queue, "new") == []  # ... with no name anywhere
    qid = writer.commit()
    assert queue._anonymous is True
    assert _names(queue, "new") == [qid] and _names(queue, "tmp") == []
    data = (queue.path / "new" / qid).read_bytes()
    assert data.startswith(b'{"v":1,"id":"' + qid.encode()) and data.endswith(BIG)
    assert os.stat(queue.path / "new" / qid).st_mode & 0o777 == 0o640 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("anonymous", [True, False], ids=["o_tmpfile", "tmp_and_rename"])
def test_an_aborted_message_leaves_nothing(tmp_path, anonymous):
    queue = _queue(tmp_path, anonymous)
    writer = queue.writer("a@b.example", ["c@d.example"])
    writer.write(BIG)
    assert _names(queue, "tmp") == ([] if anonymous else [writer.queue_id])
    writer.abort()
    assert _names(queue, "tmp") == [] and _names(queue, "new") == []
    with pytest.raises(QueueError):
        writer.commit()
    assert _names(queue, "new") == []


def test_without_o_tmpfile_the_file_is_tmp_id_renamed_into_new(tmp_path):
    queue = _queue(tmp_path, anonymous=False)
    writer = queue.writer("a@b.example", ["c@d.example"])
    writer.write(BIG)
    qid = writer.commit()
    assert _names(queue, "new") == [qid] and _names(queue, "tmp") == []
    assert (queue.path / "new" / qid).read_bytes().endswith(BIG)


def test_a_queue_id_clash_is_a_temporary_failure_that_replaces_nothing(tmp_path):
    queue = _queue(tmp_path)
    qid = queue.enqueue("a@b.example", ["c@d.example"], b"Subject: first\n\nfirst\n")
    before = (queue.path / "new" / qid).read_bytes()
    writer = queue.writer("a@b.example", ["c@d.example"], queue_id=qid)
    writer.write(BIG)
    with pytest.raises(QueueError, match="File exists"):
        writer.commit()
    assert (queue.path / "new" / qid).read_bytes() == before
    assert _names(queue, "new") == [qid] and _names(queue, "tmp") == []


def test_a_held_message_is_linked_into_hold(tmp_path):
    queue = _queue(tmp_path)
    writer = queue.writer("a@b.example", ["c@d.example"])
    writer.revise("a@b.example", ["c@d.example"], {"hold_reason": "test"}, hold=True)
    writer.write(BIG)
    qid = writer.commit()
    assert _names(queue, "hold") == [qid] and _names(queue, "new") == []


def test_a_forked_child_links_its_own_file(tmp_path):
    """new/ stays open in the Queue across a fork (prefork smtpd workers);
    /proc/self/fd must then name the child's descriptor, not the parent's."""
    queue = _queue(tmp_path)
    queue.enqueue("a@b.example", ["c@d.example"], b"Subject: parent\n\nparent\n")  # opens new/ in the parent
    parent_file = queue.writer("a@b.example", ["c@d.example"])
    parent_file.write(b"Subject: parent's open file\n\n" + b"p" * 100_000 + b"\n")  # an fd the child inherits
    pid = os.fork()
    if pid == 0:  # the child: commit a message of its own, report by exit status
        code = 1
        try:
            qid = queue.enqueue("a@b.example", ["c@d.example"], b"Subject: child\n\n" + b"c" * 100_000 + b"\n")
            data = (queue.path / "new" / qid).read_bytes()
            code = 0 if b"Subject: child" in data and b"parent" not in data else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    parent_file.abort()
    assert len(_names(queue, "new")) == 2 and _names(queue, "tmp") == []
