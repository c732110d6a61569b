"""A private Postfix over a pymail bench tree: the SMTP anchor (a benchmark helper, not a test).

``PostfixSide(root, port).start()`` writes a Postfix configuration under
``ROOT/postfix`` (its own config, queue and data directories), listening on
127.0.0.1:PORT, accepting mail for example.test from 127.0.0.0/8 and
delivering ``alice@example.test`` with virtual(8) into the same Maildir
pymail uses (``ROOT/mail/example.test/alice/``), so that both sides are
measured to the Maildir.  Postfix's defaults are kept for everything that
touches durability: its queue files are fsynced before the 250 and
virtual(8) fsyncs each Maildir file before its rename, as pymail does.

With ``transport`` (``lmtp:inet:127.0.0.1:PORT``) Postfix hands the mail for
example.test to that next hop instead (``virtual_transport``), and the mail
store stays as it is: tests/test_lmtpd_postfix.py delivers through pymta-lmtpd.

Needs root (Postfix's master starts as root and hands out its own users)
and Debian's postfix package.  The mail store goes to the ``mail`` user:
virtual(8) will not deliver as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {pfx}/queue
data_directory = {pfx}/data
meta_directory = {pfx}/conf
mail_owner = postfix
myhostname = anchor.example.test
mydomain = example.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = example.test
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{pfx}/conf/vmailbox
virtual_minimum_uid = 1
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
maillog_file = {pfx}/postfix.log
smtputf8_enable = no
biff = no
"""


class PostfixSide:
    def __init__(
        self, root: Path, port: int, users: tuple[str, ...] = ("alice",), transport: str = "", main_cf: str = ""
    ) -> None:
        self.root = root
        self.extra_main_cf = main_cf  # lines added to main.cf
        self.transport = transport
        self.port = port
        self.users = users
        self.pfx = root / "postfix"
        self.conf = self.pfx / "conf"

    def _postfix(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["postfix", "-c", str(self.conf), *args], capture_output=True, text=True, timeout=60, check=False
        )

    def start(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the Postfix anchor needs root")
        if not shutil.which("postfix"):
            raise RuntimeError("postfix not found (Debian package: postfix)")
        mail = pwd.getpwnam("mail")
        for folder in (self.root.parent, self.root):  # postfix and mail must reach it (bench trees only)
            os.chmod(folder, 0o755)
        for sub in ("conf", "queue", "data"):
            (self.pfx / sub).mkdir(parents=True, exist_ok=True)
        os.chown(self.pfx / "data", pwd.getpwnam("postfix").pw_uid, pwd.getpwnam("postfix").pw_gid)
        for name in ("master.cf", "dynamicmaps.cf", "postfix-files"):
            if Path("/etc/postfix", name).exists():
                shutil.copy(Path("/etc/postfix", name), self.conf / name)
        for name in ("dynamicmaps.cf.d", "postfix-files.d"):
            if Path("/etc/postfix", name).is_dir():
                shutil.copytree(Path("/etc/postfix", name), self.conf / name, dirs_exist_ok=True)
        master = (self.conf / "master.cf").read_text().splitlines()
        # Postfix's stock smtpd line, moved to our port and out of the chroot (which has no copy of our tree)
        master = [
            f"127.0.0.1:{self.port} inet n - n - - smtpd" if line.split()[:2] == ["smtp", "inet"] else line
            for line in master
        ]
        (self.conf / "master.cf").write_text("\n".join(master) + "\n")
        mail_dir = self.root / "mail"
        main_cf = MAIN_CF.format(pfx=self.pfx, mail=mail_dir, uid=mail.pw_uid, gid=mail.pw_gid)
        if self.transport:
            main_cf += f"virtual_transport = {self.transport}\n"
        main_cf += self.extra_main_cf
        (self.conf / "main.cf").write_text(main_cf)
        (self.conf / "vmailbox").write_text("".join(f"{u}@example.test example.test/{u}/\n" for u in self.users))
        if not self.transport:  # virtual(8) delivers as mail; an LMTP server as whoever it is
            for dirpath, dirnames, filenames in os.walk(mail_dir):
                for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
                    os.lchown(name, mail.pw_uid, mail.pw_gid)
        done = self._postfix("start")
        if done.returncode != 0:
            raise RuntimeError(f"postfix start failed: {done.stderr.strip()}\n{self.log_tail()}")

    def set(self, name: str, value: str) -> None:
        """Change one main.cf parameter and reload Postfix."""
        change = ["postconf", "-c", str(self.conf), "-e", f"{name}={value}"]
        for argv in (change, ["postfix", "-c", str(self.conf), "reload"]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")

    def stop(self) -> None:
        self._postfix("abort")
        time.sleep(0.2)

    def log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join((self.pfx / "postfix.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def master_pid(self) -> int | None:
        try:
            return int((self.pfx / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
