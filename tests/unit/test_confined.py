"""pymda.confined: paths named by rules stay under the roots, links included."""

from __future__ import annotations

import os

import pytest

from pymda import maildir
from pymda.confined import Refused, Roots
from pymda.rules.actions import redirections


@pytest.fixture
def tree(tmp_path):
    home, outside = tmp_path / "home", tmp_path / "outside"
    (home / "Mail").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("secret\n")
    return Roots([home]), home, outside


def read(roots: Roots, path) -> bytes:
    fd = roots.open(str(path), os.O_RDONLY)
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def test_inside_opens_and_outside_is_refused(tree):
    roots, home, outside = tree
    (home / "Mail" / "f").write_text("mine\n")
    assert read(roots, home / "Mail" / "f") == b"mine\n"
    for path in (outside / "secret", f"{home}/../outside/secret", f"{home}/Mail/../../outside/secret", "/etc/passwd"):
        with pytest.raises(Refused):
            read(roots, path)


def test_links_are_followed_only_while_they_stay_inside(tree):
    roots, home, outside = tree
    (home / "Mail" / "f").write_text("mine\n")
    (home / "in").symlink_to("Mail")  # relative, inside
    (home / "abs").symlink_to(home / "Mail" / "f")
    (home / "out").symlink_to(outside)
    (home / "Mail" / "up").symlink_to("../../outside/secret")
    (home / "dangling").symlink_to(outside / "new-file")
    assert read(roots, home / "in" / "f") == b"mine\n"
    assert read(roots, home / "abs") == b"mine\n"
    for path in (home / "out" / "secret", home / "Mail" / "up", home / "dangling"):
        with pytest.raises(Refused):
            read(roots, path)
        with pytest.raises(Refused):
            roots.check(str(path))
    with pytest.raises(Refused):  # would create a file through the dangling link
        roots.open(str(home / "dangling"), os.O_WRONLY | os.O_CREAT)
    assert not (outside / "new-file").exists()


def test_a_component_swapped_for_a_link_after_the_check_is_still_refused(tree):
    roots, home, outside = tree
    target = home / "Mail" / "box.mbox"
    roots.check(str(target))  # fine now...
    (home / "Mail").rename(home / "Mail.old")
    (home / "Mail").symlink_to(outside)  # ...then the user swaps the folder for a link
    with pytest.raises(Refused):
        os.close(roots.open(str(target), os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    assert sorted(os.listdir(outside)) == ["secret"]


def test_a_held_directory_cannot_be_redirected(tree):
    roots, home, outside = tree
    with roots.parent(str(home / "Mail" / "x.mbox")) as inside:
        (home / "Mail").rename(home / "Mail.old")
        (home / "Mail").symlink_to(outside)
        with open(inside, "w") as fh:  # the descriptor still means the checked directory
            fh.write("kept\n")
    assert (home / "Mail.old" / "x.mbox").read_text() == "kept\n"
    assert sorted(os.listdir(outside)) == ["secret"]


def test_fifos_and_devices_are_refused(tree):
    roots, home, _ = tree
    os.mkfifo(home / "fifo")
    with pytest.raises(Refused):
        roots.open(str(home / "fifo"), os.O_RDONLY)  # and no hang waiting for a writer
    with pytest.raises(OSError):  # ENXIO: no reader, and no hang either
        roots.open(str(home / "fifo"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def test_directories_are_made_inside_only(tree):
    roots, home, outside = tree
    os.close(roots.open_dir(str(home / "a" / "b"), create=True))
    assert (home / "a" / "b").is_dir()
    (home / "link").symlink_to(outside)
    with pytest.raises(Refused):
        roots.open_dir(str(home / "link" / "new"), create=True)
    assert not (outside / "new").exists()


def test_maildir_subdirs_that_are_links_are_refused(tree):
    roots, home, outside = tree
    folder = home / ".Folder"
    folder.mkdir()
    (outside / "tmp").mkdir()
    (folder / "tmp").symlink_to(outside / "tmp")
    fd = roots.open_dir(str(folder))
    try:
        with pytest.raises(OSError) as info:
            maildir.open_subdirs(fd)
        assert info.value.errno == __import__("errno").ELOOP
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "command,targets",
    [
        ("cat > /tmp/x", ["/tmp/x"]),
        ("cat >>/tmp/x 2>&1", ["/tmp/x"]),
        ("echo '>' \">\" \\> x", []),
        ("a 2>/dev/null >&2", ["/dev/null"]),
        ("x &> f; y >| g; z <> h", ["f", "g", "h"]),
        ('cat > "$HOME/a b"', ["$HOME/a b"]),
        ("echo $(cat > /x)", ["/x"]),
        ("a # > comment", []),
    ],
)
def test_redirections_found(command, targets):
    assert ["".join(t for _, t in word) for word in redirections(command)] == targets
