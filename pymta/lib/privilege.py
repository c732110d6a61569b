"""Who a process runs as: the one place that switches identities.

Postfix's rule, and ours: only the step that must switch users holds
privilege.  The daemons and the queue runner become ``daemon_user`` for
good (``become``); a delivery into a mailbox owned by another uid is made
by a process that has become the mailbox owner *before* it reads the
owner's rules, ``.forward`` or any path named in them (pymda-deliver,
pymda-local).  Every switch is checked: a process that could get root
back, or whose ids did not change, refuses to go on.
"""

from __future__ import annotations

import os


class PrivilegeError(Exception):
    """The switch could not be made (never go on as root by mistake)."""


def daemon_account(name: str):
    """(pwd entry, problem) for ``daemon_user``: problem is a message when
    the switch cannot be made from this process's identity."""
    import pwd  # noqa: PLC0415 lazy

    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None, f"config: daemon_user: no such user {name!r}"
    if os.geteuid() not in (0, pw.pw_uid):
        return pw, f"daemon_user = {name!r}: cannot switch to it: not started as root or as that user"
    return pw, None


def become(uid: int, gid: int, name: str | None = None) -> None:
    """Switch this process to ``uid``/``gid`` for good: supplementary groups
    are ``name``'s (initgroups) when it names an account, else just ``gid``.
    Raises PrivilegeError when the switch fails or could be undone."""
    if os.geteuid() == uid and os.getuid() == uid and os.getegid() == gid:
        return
    try:
        if name is not None:
            os.initgroups(name, gid)
        else:
            os.setgroups([gid])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to uid {uid}: {exc.strerror}") from None
    if uid != 0:
        try:
            os.setuid(0)
        except OSError:
            pass
        else:
            raise PrivilegeError(f"could get root back after switching to uid {uid}")
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        raise PrivilegeError(f"the switch to uid {uid} did not take")


def become_account(pw) -> None:
    """``become`` a pwd entry, and set HOME/USER/LOGNAME to match."""
    become(pw.pw_uid, pw.pw_gid, pw.pw_name)
    os.environ["HOME"], os.environ["USER"], os.environ["LOGNAME"] = pw.pw_dir, pw.pw_name, pw.pw_name


def safe_for(path, uid: int) -> str | None:
    """Why the file ``path`` must not be read by a delivery running as
    ``uid`` (None when it may): like procmail, a rules or forward file
    must belong to that uid or to root and be writable by nobody else --
    a root delivery never runs a file another user could have written."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    if st.st_uid not in (uid, 0):
        return f"owned by uid {st.st_uid}, not by {uid} or root"
    if st.st_mode & 0o022:
        return "writable by group or others"
    return None
