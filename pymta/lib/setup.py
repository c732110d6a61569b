"""Setting up a tree for daemon_user: the account and who owns what.

``pymail init`` run as root makes the daemons' account (like Postfix's
``postfix`` user) and gives it what it writes -- the queue, the mail
store, ``run/`` -- while root keeps what only root should change: the
config, the aliases, the TLS key (the daemons read it before they leave
root).  The users file is root's, readable by the account's group.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def ensure_daemon_account(name: str, home: Path):
    """The pwd entry of ``name``; made as a system user (no login, its own
    group) when missing and we are root.  Raises OSError with a message."""
    import pwd  # noqa: PLC0415 lazy

    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise OSError(f"no such user {name!r} (only root can make it)")
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    nologin = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false") if os.path.exists(p)), "/bin/false")
    proc = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            str(Path(home).absolute()),
            "--shell",
            nologin,
            name,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise OSError(f"useradd failed: {proc.stderr.strip() or proc.returncode}")
    return pwd.getpwnam(name)


def hand_tree_to(directory: Path, pw) -> None:
    """Give ``pw`` the parts of a pymail tree the daemons write (root only)."""
    directory = Path(directory)
    uid, gid = pw.pw_uid, pw.pw_gid
    (directory / "run").mkdir(mode=0o700, exist_ok=True)
    for sub in ("queue", "mail", "run"):
        chown_tree(directory / sub, uid, gid)
    users = directory / "users"
    if users.exists():
        os.chown(users, 0, gid)
        os.chmod(users, 0o640)
    share_tls_key(directory / "tls" / "key.pem", pw)
    for path, mode in ((directory, 0o755), (directory / "tls", 0o755)):
        if path.is_dir():
            os.chown(path, 0, 0)
            os.chmod(path, mode)


def share_tls_key(key: Path, pw) -> None:
    """The TLS key root's and readable by ``pw``'s group (0640): a daemon that
    became ``pw`` reads a renewed key on SIGHUP.  It holds the key in memory
    anyway, so the file tells it nothing more."""
    if pw.pw_uid != 0 and Path(key).exists():  # daemons that stay root read it as it is
        os.chown(key, 0, pw.pw_gid)
        os.chmod(key, 0o640)


def chown_tree(top: Path, uid: int, gid: int) -> None:
    """``top`` and everything below it to ``uid``/``gid`` (links themselves, never followed)."""
    for dirpath, dirnames, filenames in os.walk(top):
        for entry in dirnames + filenames:
            os.lchown(os.path.join(dirpath, entry), uid, gid)
    os.chown(top, uid, gid)


def unreachable_by(directory: Path, pw) -> str | None:
    """Why ``pw`` cannot reach ``directory`` (a parent it may not search), or None."""
    groups = {g for g in os.getgrouplist(pw.pw_name, pw.pw_gid)}
    path = Path(directory).resolve()
    for folder in [*reversed(path.parents), path]:
        try:
            st = os.stat(folder)
        except FileNotFoundError:
            return None  # made by init, searchable by all
        except OSError as exc:
            return f"{folder}: {exc.strerror}"
        if st.st_uid == pw.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in groups:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return f"{folder} is mode {st.st_mode & 0o7777:o}"
    return None
