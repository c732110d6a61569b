#!/usr/bin/env python3
"""Start Debian's Dovecot over a pymail tree, for side-by-side benchmarks.

usage: python3 tests/bench/dovecot_side.py ROOT POP3_PORT IMAP_PORT [--quota]

Dovecot reads the same users file (run as root, the mail store is handed
to the ``mail`` user first, because Dovecot refuses uid 0) (Dovecot passwd-file format is ours) and
the same Maildirs (``ROOT/mail/<domain>/<user>``), listens on 127.0.0.1
without TLS, and runs in the foreground until killed.  With ``--quota`` it
loads the quota plugins over Maildir++ (``quota = maildir:User quota``),
the limits coming from the users file's ``userdb_quota_rule`` fields.  Needs the Debian
packages dovecot-pop3d and dovecot-imapd.  A benchmark helper, not a test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONFIG = """\
base_dir = {run}/base
state_dir = {run}/state
log_path = {run}/dovecot.log
protocols = pop3 imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 0
default_login_user = {user}
default_internal_user = {user}
mail_location = maildir:{root}/mail/%d/%n
passdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%d/%n
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


QUOTA = """\
mail_plugins = quota
protocol imap {
  mail_plugins = $mail_plugins imap_quota
}
plugin {
  quota = maildir:User quota
}
"""


def main() -> int:
    quota = sys.argv[4:] == ["--quota"]
    if quota:
        del sys.argv[4:]
    if len(sys.argv) != 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 64
    root = Path(sys.argv[1]).resolve()
    run = root / "dovecot-run"
    (run / "base").mkdir(parents=True, exist_ok=True)
    (run / "state").mkdir(parents=True, exist_ok=True)
    # Dovecot's auth process runs as dovenull: it must reach the users file
    # (benchmark trees only; a real users file stays 0640).
    os.chmod(root, 0o755)
    os.chmod(root / "users", 0o644)
    st = os.stat(root / "mail")
    if os.geteuid() == 0:  # Dovecot will not access mail as root: hand the store to "mail"
        import pwd

        mail = pwd.getpwnam("mail")
        for dirpath, dirnames, filenames in os.walk(root / "mail"):
            for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
                os.lchown(name, mail.pw_uid, mail.pw_gid)
        st = os.stat(root / "mail")
    user = "dovenull" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    conf = run / "dovecot.conf"
    conf.write_text(
        CONFIG.format(run=run, root=root, pop3=sys.argv[2], imap=sys.argv[3], uid=st.st_uid, gid=st.st_gid, user=user)
        + (QUOTA if quota else "")
    )
    os.execvp("dovecot", ["dovecot", "-F", "-c", str(conf)])


if __name__ == "__main__":
    sys.exit(main())
