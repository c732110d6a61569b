"""Maildir and Maildir++: the one place that knows the format.

Writing follows the DJB rules: create ``tmp/<unique>`` with O_EXCL, write,
fsync, rename into ``new/``, fsync the directory.  No lock is taken, so
delivery works over NFS and never blocks a reader.  Every writer goes
through here: ``deliver`` (into new/), ``Spool`` + ``into_cur`` (IMAP
APPEND) and ``stage_copy`` + ``into_cur`` (IMAP COPY); names are built
only by ``unique_name``, ``sized_name``, ``flagged_name`` and ``copy_name``.

File names carry sizes so readers never open a file to learn them
(Dovecot's convention)::

    <sec>.M<usec>P<pid>Q<n>R<rand>.<host>,S=<size>,W=<crlf_size>[:2,<flags>]
    <sec>.M<usec>P<pid>Q<n>V<queue id><rcpt hash>.<host>,...   (from the queue runner)

A delivery from the queue carries its queue ID and a hash of the recipient
in the name (``V``), so a delivery repeated after a crash can find its
earlier copy in ``new/`` or ``cur/`` and not write a second one.

``S`` is the size on disk (LF line ends), ``W`` the RFC 822 size with CRLF
line ends (what POP3 LIST and IMAP RFC822.SIZE report).  The flags after
``:2,`` are the standard letters, then keyword letters a-z (``KeywordMap``,
Dovecot's ``dovecot-keywords`` layout).  Folders are
Maildir++: ``.Name`` and ``.Parent.Child`` directories beside ``new/cur/tmp``
of the INBOX, each with an empty ``maildirfolder`` file.
"""

from __future__ import annotations

import contextvars
import errno
import os
import re
import socket
import stat
import time
from pathlib import Path

from pymta.lib.fsutil import fsync_dir
from pymta.lib.fsutil import unlink_quietly as _unlink_quietly

_ARRIVAL = re.compile(r"([0-9]+)\.(?:M([0-9]{1,7}))?").match

SUBDIRS = ("tmp", "new", "cur")
_counter = 0
_hostname = None


class MaildirError(Exception):
    """A Maildir could not be written; ``temporary`` says whether to retry."""

    def __init__(self, message: str, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


def user_maildir(mail_root: Path, address: str) -> Path:
    """``MAIL/<domain>/<local>/`` for a canonical ``local@domain``.

    The address comes from the users file, which refuses '/' and '..'; we
    check again because this builds a path (MaildirError, not temporary).
    """
    local, _, domain = address.rpartition("@")
    for part in (local, domain):
        if not part or part.startswith(".") or "/" in part or "\x00" in part:
            raise MaildirError(f"unsafe mailbox name {address!r}", temporary=False)
    return Path(f"{os.fspath(mail_root)}/{domain.lower()}/{local.lower()}")  # one Path made, not three


def _host() -> str:
    # '/' and ':' would break the name (DJB: replace them)
    global _hostname
    if _hostname is None:
        _hostname = socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"
    return _hostname


# (tag, once) for the deliveries of the current context: set around a
# user's rules by the deliverer, so each folder a rule files into gets the
# queue runner's tag without the rules engine knowing about it.
delivery_tag: contextvars.ContextVar[tuple[str, bool] | None] = contextvars.ContextVar("delivery_tag", default=None)


def queue_tag(queue_id: str, recipient: str) -> str:
    """The ``V`` part of the names of one queue entry's deliveries to one recipient."""
    import hashlib  # noqa: PLC0415 lazy

    digest = hashlib.sha256(recipient.lower().encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return "".join(c for c in queue_id if c.isalnum()) + digest


def unique_name(tag: str | None = None) -> str:
    global _counter
    _counter += 1
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    if tag:
        return f"{sec}.M{usec}P{os.getpid()}Q{_counter}V{tag}.{_host()}"
    rand = int.from_bytes(os.urandom(3), "big")
    return f"{sec}.M{usec}P{os.getpid()}Q{_counter}R{rand:06x}.{_host()}"


def find_tagged(maildir: Path, tag: str) -> Path | None:
    """A message in new/ or cur/ whose name carries ``tag``, or None."""
    needle = f"V{tag}."
    for sub in ("new", "cur"):
        try:
            names = os.listdir(f"{maildir}/{sub}")
        except OSError:
            continue
        for name in names:
            if needle in name:
                return Path(maildir) / sub / name
    return None


def ensure_maildir(path: Path, folder: bool = False) -> None:
    """Create a Maildir (and for a ++ folder its ``maildirfolder`` marker).

    The Maildir and its ``cur/new/tmp`` are private (0700), as Dovecot
    makes them; a missing parent (the domain's directory) gets the default
    mode."""
    path = Path(path)
    if not path.is_dir():
        os.makedirs(path.parent, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    for sub in SUBDIRS:
        os.makedirs(path / sub, mode=0o700, exist_ok=True)
    if folder:
        marker = path / "maildirfolder"
        if not marker.exists():
            marker.touch(mode=0o600)


def open_subdirs(box_fd: int, folder: bool = False) -> tuple[int, int]:
    """Descriptors of ``tmp/`` and ``new/`` under the Maildir open as
    ``box_fd``, made (with ``cur/``, and a ++ folder's marker) when missing;
    a symbolic link in their place is refused (ELOOP), never followed."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fds = {}
    try:
        for sub in SUBDIRS:
            try:
                os.mkdir(sub, 0o700, dir_fd=box_fd)
            except FileExistsError:
                pass
            try:
                fds[sub] = os.open(sub, flags, dir_fd=box_fd)
            except NotADirectoryError:  # O_NOFOLLOW|O_DIRECTORY on a link: say ELOOP, as for a file
                if stat.S_ISLNK(os.stat(sub, dir_fd=box_fd, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), sub) from None
                raise
        if folder:
            os.close(
                os.open("maildirfolder", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=box_fd)
            )
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    os.close(fds.pop("cur"))
    return fds["tmp"], fds["new"]


def sized_name(unique: str, size: int, wsize: int) -> str:
    """The base name of a message: its unique part, ``,S=<size>,W=<crlf size>``."""
    return f"{unique},S={size},W={wsize}"


def flagged_name(base: str, flags: str) -> str:
    """The name of a message in cur/: ``<base>:2,<flags>`` (flags: sorted info
    letters, from ``KeywordMap.info`` when keywords are set)."""
    return f"{base}:2,{flags}"


# -- keywords in names (Dovecot's layout) -----------------------------------------
#
# The info part carries the standard flags as uppercase letters and up to 26
# keywords as the lowercase letters a-z, all sorted in ASCII order
# (``:2,DFRSab``).  The folder's ``dovecot-keywords`` file says which keyword
# each letter stands for, one ``N name`` line per letter in use (N = 0 for
# ``a``, 1 for ``b``, ...).  Letters are never renumbered: a new keyword takes
# the first free one, and a keyword past the 26th has no letter (the IMAP
# index keeps it).  The file is replaced whole (tmp + fsync + rename) and only
# by a holder of the folder's index lock, so processes agree on the letters.

KEYWORDS_FILE = "dovecot-keywords"
KEYWORD_SLOTS = 26
FORWARDED = "$Forwarded"  # the P letter; Dovecot keeps it as a keyword letter
_KEYWORD_OK = re.compile(r"[^\x00-\x20\x7f-\U0010ffff(){%*\"\\\]]{1,100}").fullmatch  # an IMAP atom


def keyword_letters(info: str) -> str:
    """The keyword letters (a-z) of an info part."""
    return "".join(c for c in info if "a" <= c <= "z")


class KeywordMap:
    """A folder's ``dovecot-keywords``: letter slots 0-25 -> keyword names.

    ``info()`` turns flags and keywords into an info part (taking free
    letters for new keywords) and ``keywords()`` reads one; ``changed``
    says the map must be saved (``save``) before a name using it is written.
    """

    def __init__(self, slots: list[str | None] | None = None) -> None:
        self.slots: list[str | None] = list(slots or [None] * KEYWORD_SLOTS)
        self.changed = False

    @classmethod
    def load(cls, folder: str | os.PathLike) -> KeywordMap:
        """The map of ``folder`` (empty when it has no file); lines that are
        not ``N name`` with N below 26 and name a keyword are skipped."""
        kmap = cls()
        try:
            fd = os.open(os.path.join(folder, KEYWORDS_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return kmap  # none (a link in its place is replaced by the next save, never followed)
            raise
        try:
            data = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        for line in data.decode("utf-8", "replace").split("\n"):
            number, sep, name = line.partition(" ")
            if sep and number.isdigit() and int(number) < KEYWORD_SLOTS and _KEYWORD_OK(name):
                kmap.slots[int(number)] = name
        return kmap

    def text(self) -> bytes:
        return "".join(f"{i} {n}\n" for i, n in enumerate(self.slots) if n is not None).encode()

    def save(self, folder: str | os.PathLike) -> None:
        """Replace ``folder``'s file with this map (tmp + fsync + rename).  Raises OSError."""
        path = os.path.join(folder, KEYWORDS_FILE)
        tmp = os.path.join(folder, f".{KEYWORDS_FILE}.tmp{os.getpid()}")
        data = self.text()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        self.changed = False

    def _slot(self, name: str) -> int | None:
        low = name.lower()  # keywords are case-insensitive (RFC 3501 2.3.2; Dovecot's lookup)
        for i, n in enumerate(self.slots):
            if n is not None and n.lower() == low:
                return i
        return None

    def letter(self, name: str) -> str:
        """The letter of keyword ``name``, or '' when it has none."""
        i = self._slot(name)
        return "" if i is None else chr(ord("a") + i)

    def _letter(self, name: str) -> str:
        """The letter of keyword ``name``, a free one taken when it has none; '' when all 26 are taken."""
        i = self._slot(name)
        if i is None:
            if not _KEYWORD_OK(name) or None not in self.slots:
                return ""
            i = self.slots.index(None)
            self.slots[i] = name
            self.changed = True
        return chr(ord("a") + i)

    def info(self, flags: str, keywords) -> str:
        """The info part for standard ``flags`` (uppercase letters; any
        keyword letters in it are dropped) and ``keywords``: sorted, the
        keywords that have (or get) a letter as lowercase letters.  P
        ($Forwarded) also gets $Forwarded's keyword letter, as Dovecot reads it."""
        letters = {c for c in flags if c.isalpha() and not "a" <= c <= "z"}
        names = sorted(keywords, key=str.lower)  # new letters in name order
        if "P" in letters:
            names.insert(0, FORWARDED)
        for name in names:
            letters.add(self._letter(name))
        letters.discard("")
        return "".join(sorted(letters))

    def keywords(self, info: str, before: str = "") -> tuple[str, frozenset[str]]:
        """(standard flags, keywords) an info part carries, ``before`` the
        info part the message had (another program changed it).  A letter
        without a name gets ``unknown-N`` (as Dovecot names it, so no later
        keyword takes it).  $Forwarded's letter reads as P; P without it,
        when ``before`` had both, is what Dovecot leaves when it takes
        $Forwarded away (it keeps letters it does not know): no P."""
        flags = "".join(c for c in info if not "a" <= c <= "z")
        names = set()
        for c in keyword_letters(info):
            i = ord(c) - ord("a")
            name = self.slots[i]
            if name is None:
                name = f"unknown-{i}"
                while self._slot(name) is not None:
                    name += "?"
                self.slots[i] = name
                self.changed = True
            if name.lower() == FORWARDED.lower():
                if "P" not in flags:
                    flags = "".join(sorted(flags + "P"))
            else:
                names.add(name)
        if "P" in flags and "P" in before and (slot := self._slot(FORWARDED)) is not None:
            letter = chr(ord("a") + slot)
            if letter in before and letter not in info:
                flags = flags.replace("P", "")
        return flags, frozenset(names)


def copy_name(base: str, wsize: int) -> str:
    """A base name for a copy of the message named ``base``: a new unique part, the same size fields."""
    suffix = base.split(",", 1)[1] if "," in base else f"W={wsize}"
    return f"{unique_name()},{suffix}"


def crlf_size(data: bytes) -> int:
    """Size of ``data`` (LF line ends) on the wire with CRLF line ends."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def deliver(
    maildir: Path,
    chunks,
    *,
    folder: bool = False,
    fsync: bool = True,
    tag: str | None = None,
    once: bool = False,
    dirs: tuple[Path, Path] | None = None,
    admit=None,
) -> Path:
    """Write a message into ``maildir/new`` and return its final path.

    ``chunks`` is an iterable of bytes with LF line ends (or one bytes
    object).  Raises MaildirError: temporary for disk/permission trouble so
    the caller defers (never a half-written file in new/).  ``tag`` (else
    the context's ``delivery_tag``) goes into the name; with ``once`` a
    message already carrying the tag is not written again and its path is
    returned (a delivery repeated after a crash).  ``dirs``: the
    (tmp, new) directories to use instead of ``maildir/tmp`` and
    ``maildir/new`` (the rules engine passes ``/proc/self/fd`` paths of
    descriptors from ``open_subdirs``, so no link swapped in redirects it).
    ``admit(size)`` is called once the message is complete in tmp/, before
    anything else sees it (the quota check): what it raises stops the
    delivery and the tmp file goes.
    """
    maildir = Path(maildir)
    box = os.fspath(maildir)  # plain strings below: this runs once per delivered copy
    if tag is None and (context := delivery_tag.get()) is not None:
        tag, once = context
    folder_dir = os.path.join(dirs[1], "..") if dirs else box  # where the journal lives
    if tag and once and (earlier := _earlier_copy(maildir, folder_dir, tag, dirs)) is not None:
        return earlier
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        chunks = (bytes(chunks),)
    for attempt in range(2):
        name = unique_name(tag)
        tmp = f"{dirs[0] if dirs else box + '/tmp'}/{name}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            break
        except FileNotFoundError:
            if attempt:
                raise MaildirError(f"{maildir}: cannot create tmp file") from None
            try:
                ensure_maildir(maildir, folder=folder)
            except OSError as exc:
                raise MaildirError(f"{maildir}: {exc.strerror}") from None
        except FileExistsError:
            continue
        except OSError as exc:
            raise MaildirError(f"{tmp}: {exc.strerror}") from None
    else:
        raise MaildirError(f"{maildir}: could not find a unique name")
    size = wsize = 0
    try:
        last = b""
        for chunk in chunks:
            if not chunk:
                continue
            view = memoryview(chunk)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            size += len(chunk)
            wsize += len(chunk) + chunk.count(b"\n")
            if b"\r" in chunk:  # rare (the text has LF ends): the slower two-octet count only then
                wsize -= chunk.count(b"\r\n")
            if last == b"\r" and chunk[:1] == b"\n":
                wsize -= 1  # CRLF split across chunks
            last = chunk[-1:]
        if fsync:
            os.fsync(fd)
        if admit is not None:
            admit(size)
        if tag:  # complete on disk: from now on a repeat must find it, in tmp/ at worst
            from pymda import delivered  # noqa: PLC0415 lazy

            delivered.remember(folder_dir, tag, name)
    except OSError as exc:
        os.close(fd)
        _unlink_quietly(tmp)
        raise MaildirError(f"{tmp}: {exc.strerror}", temporary=True) from None
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    new_dir = os.fspath(dirs[1]) if dirs else box + "/new"
    final = f"{new_dir}/{sized_name(name, size, wsize)}"
    try:
        os.rename(tmp, final)
        if fsync:
            fsync_dir(new_dir)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise MaildirError(f"{final}: {exc.strerror}") from None
    return Path(final)


def _earlier_copy(maildir: Path, folder_dir, tag: str, dirs) -> Path | None:
    """Where the copy tagged ``tag`` went, when an earlier attempt made it.

    The tag is journalled once the tmp/ file is complete and fsynced, before
    the rename: so a journalled tag means the copy is in new/ or cur/, or was
    deleted by the user since, or -- the attempt died before its rename --
    still in tmp/, where it is finished now.
    """
    from pymda import delivered  # noqa: PLC0415 lazy

    if (earlier := find_tagged(maildir, tag)) is not None:
        return earlier
    names = delivered.recorded(folder_dir, tag)
    if not names:
        return None
    tmp_dir = dirs[0] if dirs else maildir / "tmp"
    for name in names:  # only a journalled (complete) tmp file is finished
        stranded = Path(tmp_dir) / name
        if "/" in name or not os.path.isfile(stranded):
            continue
        size, wsize = message_sizes(stranded, name)
        final = (dirs[1] if dirs else maildir / "new") / sized_name(name, size, wsize)
        try:
            os.rename(stranded, final)
            fsync_dir(final.parent)
            return final
        except OSError:
            continue
    return maildir / "new" / f"(delivered before as {tag}, since removed)"


def into_cur(tmp: str | os.PathLike, maildir: str | os.PathLike, base: str, flags: str) -> Path:
    """Rename a finished ``tmp/`` file into ``cur/`` as ``base:2,flags``; its new path.

    The IMAP index calls this under its lock, so the message gets its UID
    before any other process can see it.
    """
    os.makedirs(Path(maildir) / "cur", mode=0o700, exist_ok=True)
    final = Path(maildir) / "cur" / flagged_name(base, flags)
    os.rename(tmp, final)
    return final


def stage_copy(src: str | os.PathLike, maildir: str | os.PathLike, base: str) -> Path | None:
    """Hard-link (else copy) message ``src`` into ``maildir/tmp/base``: the
    first step of an IMAP COPY, finished by ``into_cur``.  None when ``src``
    is gone (expunged meanwhile); a failed copy leaves nothing in tmp/."""
    tmp = Path(maildir) / "tmp" / base
    try:
        os.link(src, tmp)
    except FileNotFoundError:
        return None
    except OSError:
        import shutil  # noqa: PLC0415 lazy

        try:
            shutil.copyfile(src, tmp)
        except BaseException:
            _unlink_quietly(tmp)
            raise
    return tmp


class Spool:
    """A message written into ``tmp/`` while it arrives with CRLF line ends
    (an IMAP APPEND literal) and stored with LF ones.

    A write error is kept, not raised, so the rest of the literal is still
    read; ``finish()`` raises it.  ``base`` is the name the message keeps.
    """

    def __init__(self, maildir: str | os.PathLike) -> None:
        tmp_dir = f"{maildir}/tmp"
        self.name = unique_name()
        self.path = f"{tmp_dir}/{self.name}"
        os.makedirs(tmp_dir, mode=0o700, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.size = 0  # LF size (S=)
        self.wsize = 0  # CRLF size (W=)
        self.carry = b""  # a CR that may start a CRLF split across writes
        self.error: OSError | None = None
        self.closed = False
        self.bare_lf = False  # a LF without CR came: stored as a line end, it reads back as CRLF

    @property
    def base(self) -> str:
        return sized_name(self.name, self.size, self.wsize)

    def write(self, data: bytes) -> None:
        if self.error is not None:
            return
        data = self.carry + data
        self.carry = b""
        if data.endswith(b"\r"):
            data, self.carry = data[:-1], b"\r"
        lf = data.replace(b"\r\n", b"\n")
        if not self.bare_lf and lf.count(b"\n") != len(data) - len(lf):
            self.bare_lf = True
        self.size += len(lf)
        self.wsize += len(lf) + lf.count(b"\n")
        try:
            view = memoryview(lf)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            self.error = exc

    def finish(self, mtime: int | None = None) -> str:
        """Close and fsync the file (its mtime set to ``mtime`` when given); its path."""
        if self.carry:
            c, self.carry = self.carry, b""
            try:
                os.write(self.fd, c)
            except OSError as exc:
                self.error = exc
            self.size += 1
            self.wsize += 1
        if not self.closed:
            try:
                os.fsync(self.fd)
            except OSError as exc:
                self.error = self.error or exc
            os.close(self.fd)
            self.closed = True
        if self.error is not None:
            self.abort()
            raise self.error
        if mtime is not None:
            try:  # INTERNALDATE for readers of the file (a rename keeps it)
                os.utime(self.path, (mtime, mtime))
            except OSError:
                pass
        return self.path

    def abort(self) -> None:
        if not self.closed:
            os.close(self.fd)
            self.closed = True
        _unlink_quietly(self.path)


# -- reading -------------------------------------------------------------------


def parse_name(name: str) -> tuple[str, dict, str]:
    """Split a Maildir file name into (base, fields, flags).

    ``1700000000.M1P2Q3.host,S=120,W=123:2,FS`` ->
    (``1700000000.M1P2Q3.host,S=120,W=123``, {"S": "120", "W": "123"}, "FS").
    The base name (everything before ``:2,``) is what stays stable across
    moves from new/ to cur/ and flag changes: POP3's UIDL uses it.
    """
    base, sep, info = name.partition(":")
    flags = info[2:] if sep and info.startswith("2,") else ""
    fields = {}
    for part in base.split(",")[1:]:
        key, eq, value = part.partition("=")
        if eq:
            fields[key] = value
    return base, fields, flags


def message_sizes(path: Path, name: str | None = None) -> tuple[int, int]:
    """(size on disk, CRLF size) from the name, or by reading when absent."""
    name = name or Path(path).name
    _, fields, _ = parse_name(name)
    size = fields.get("S")
    wsize = fields.get("W")
    if size and size.isdigit() and wsize and wsize.isdigit():
        return int(size), int(wsize)
    with open(path, "rb") as fh:
        data_size = 0
        crlf = 0
        last = b""
        while chunk := fh.read(1 << 16):
            data_size += len(chunk)
            crlf += len(chunk) + chunk.count(b"\n") - chunk.count(b"\r\n")
            if last == b"\r" and chunk[:1] == b"\n":
                crlf -= 1
            last = chunk[-1:]
    return data_size, crlf


def arrival_key(name: str):
    """Sort key putting ``<sec>.M<usec>...`` names in delivery order (usec is not zero-padded)."""
    m = _ARRIVAL(name)  # runs once per message at every POP3 login: one C-level match
    if m is None:
        sec = name.partition(".")[0]
        return (int(sec) if sec.isdigit() else 0, 0, name)
    return (int(m[1]), int(m[2] or 0), name)


def list_messages(maildir: Path) -> list[tuple[str, str]]:
    """(subdir, file name) of every message in new/ and cur/, in delivery order.

    Plain strings, not Paths: a POP3 login lists thousands of names.
    """
    out: list[tuple[str, str]] = []
    for sub in ("new", "cur"):
        try:
            names = os.listdir(f"{maildir}/{sub}")
        except FileNotFoundError:
            continue
        out.extend((sub, n) for n in names if not n.startswith("."))
    out.sort(key=lambda item: arrival_key(item[1]))
    return out


# -- reading helpers for POP3 --


def index_by_base(maildir: Path) -> dict[str, list[Path]]:
    """Base name (without ``:2,FLAGS``) -> paths of the files in new/ and cur/ that carry it.

    A reader that remembered a message by base name finds it here again
    after another reader moved it from new/ to cur/ or changed its flags.
    """
    index: dict[str, list[Path]] = {}
    for sub in ("new", "cur"):
        directory = Path(maildir) / sub
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            if not name.startswith("."):
                index.setdefault(name.partition(":")[0], []).append(directory / name)
    return index


def find_by_base(maildir: Path, base: str) -> Path | None:
    """The current path of the message with base name ``base`` (cur/ first), or None."""
    paths = index_by_base(maildir).get(base, ())
    return min(paths, key=lambda p: p.parent.name != "cur", default=None)
