"""The `pymail` admin command: init, user, config (CliRunner) and run (a real process)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from pymta import cli as cli_mod
from pymta.cli import cli
from pymta.lib import config
from pymta.lib.users import UsersFile

REPO = Path(__file__).resolve().parent.parent


# pytest's folders are root's alone: a daemon user could not reach a tree in them
AS_ROOT = ["--daemon-user", "root"] if os.geteuid() == 0 else []


def invoke(*args, input=None, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One `pymail init` (openssl is slow), copied for each test."""
    d = tmp_path_factory.mktemp("template") / "mail"
    result = invoke("init", d, "--domain", "Example.Test", "--hostname", "mx.example.test", *AS_ROOT)
    assert result.exit_code == 0, result.output
    return d


@pytest.fixture
def tree(template, tmp_path):
    d = tmp_path / "pm"
    shutil.copytree(template, d)
    return d


# -- init --------------------------------------------------------------------------------


def test_init_makes_a_complete_tree(template):
    for name in ("pymail.toml", "users", "aliases", "tls/cert.pem", "tls/key.pem"):
        assert (template / name).is_file(), name
    assert (template / "queue").is_dir() and (template / "mail").is_dir()
    for sub in ("tmp", "new", "deferred", "hold", "corrupt", "state"):  # smtpd can queue at once
        assert (template / "queue" / sub).is_dir(), sub
    assert (template / "users").read_text() == ""
    assert (template / "aliases").read_text().startswith("#")
    assert stat.S_IMODE((template / "tls/key.pem").stat().st_mode) == 0o600
    cfg = config.load(template / "pymail.toml")
    assert cfg.domains == ["example.test"] and cfg["hostname"] == "mx.example.test"
    assert cfg.root == template.resolve()
    assert cfg["listen.smtp"] == config.PARAM_BY_NAME["listen.smtp"].default
    with open(template / "pymail.toml", "rb") as fh:
        assert tomllib.load(fh)["root"] == "."  # relocatable


def test_every_commented_example_of_init_is_valid_uncommented(tree):
    # "# transport_map = ..." must pass `config check` once its "# " is taken off
    text = (tree / "pymail.toml").read_text().splitlines()
    examples = [i for i, line in enumerate(text) if re.fullmatch(r"# [a-z_0-9]+ = .+", line)]
    assert len(examples) > 50 and any("transport_map" in text[i] for i in examples)
    conf = tree / "try.toml"
    for i in examples:
        conf.write_text("\n".join(text[:i] + [text[i][2:]] + text[i + 1 :]) + "\n")
        result = invoke("-C", conf, "config", "check")
        assert result.exit_code == 0, (text[i], result.output)
    conf.write_text("\n".join(line[2:] if n in examples else line for n, line in enumerate(text)) + "\n")
    assert invoke("-C", conf, "config", "check").exit_code == 0
    done = subprocess.run(
        [sys.executable, str(REPO / "bin" / "pymail"), "-C", str(conf), "config", "check"], capture_output=True
    )
    assert done.returncode == 0, done.stderr


def test_init_output_lists_files_and_next_steps(tmp_path):
    result = invoke("init", tmp_path / "x", *AS_ROOT)
    assert result.exit_code == 0
    assert "pymail.toml" in result.output and "pymail user add" in result.output and "pymail run" in result.output
    assert config.load(tmp_path / "x" / "pymail.toml").domains == ["example.test"]


def test_init_refuses_existing_unless_forced(tree):
    (tree / "users").write_text("keep@example.test:{PLAIN}x\n")
    result = invoke("init", tree)
    assert result.exit_code == 73
    assert len(result.stderr.strip().splitlines()) == 1 and "--force" in result.stderr
    result = invoke("init", tree, "--force", "--domain", "other.test", *AS_ROOT)
    assert result.exit_code == 0, result.output
    assert config.load(tree / "pymail.toml").domains == ["other.test"]
    assert (tree / "users").read_text() == "keep@example.test:{PLAIN}x\n"  # data is never overwritten


def test_init_rejects_bad_domain(tmp_path):
    result = invoke("init", tmp_path / "x", "--domain", "../evil")
    assert result.exit_code == 65
    assert not (tmp_path / "x" / "pymail.toml").exists()


def test_tree_is_relocatable(tree, tmp_path):
    moved = tmp_path / "elsewhere"
    tree.rename(moved)
    result = invoke("config", "check", moved)
    assert result.exit_code == 0, result.output


# -- user ----------------------------------------------------------------------------------


def test_user_add_generates_password_and_maildir(tree):
    result = invoke("user", "add", tree, "Alice@Example.Test")
    assert result.exit_code == 0, result.output
    password = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("password: ")][0]
    assert len(password) == 16
    users = UsersFile(tree / "users")
    assert users.verify("alice@example.test", password)
    assert users.lookup("alice@example.test").password.startswith("{BLF-CRYPT}$2b$10$")
    for sub in ("tmp", "new", "cur"):
        assert (tree / "mail" / "example.test" / "alice" / sub).is_dir()


def test_user_add_password_stdin(tree):
    result = invoke("user", "add", tree, "bob@example.test", "--password-stdin", input="hunter2 pass\n")
    assert result.exit_code == 0, result.output
    assert "password:" not in result.stdout
    assert UsersFile(tree / "users").verify("bob@example.test", "hunter2 pass")


def test_user_add_errors(tree):
    assert invoke("user", "add", tree, "a@example.test", "--password-stdin", input="x\n").exit_code == 0
    dup = invoke("user", "add", tree, "A@EXAMPLE.TEST", "--password-stdin", input="x\n")
    assert dup.exit_code == 73 and "exists" in dup.stderr
    foreign = invoke("user", "add", tree, "a@elsewhere.test")
    assert foreign.exit_code == 65 and "elsewhere.test" in foreign.stderr
    bad = invoke("user", "add", tree, "../x@example.test")
    assert bad.exit_code == 65
    empty = invoke("user", "add", tree, "e@example.test", "--password-stdin", input="\n")
    assert empty.exit_code == 65
    assert [r.address for r in UsersFile(tree / "users").list()] == ["a@example.test"]


def test_user_passwd_del_list(tree):
    invoke("user", "add", tree, "a@example.test", "--password-stdin", input="one\n")
    invoke("user", "add", tree, "b@example.test", "--password-stdin", input="two\n")
    result = invoke("user", "passwd", tree, "a@example.test", "--password-stdin", input="three\r\n")
    assert result.exit_code == 0, result.output
    users = UsersFile(tree / "users")
    assert users.verify("a@example.test", "three") and not users.verify("a@example.test", "one")
    assert invoke("user", "passwd", tree, "zz@example.test", "--password-stdin", input="x\n").exit_code == 67
    listed = invoke("user", "list", tree)
    assert listed.exit_code == 0 and listed.stdout.split() == ["a@example.test", "b@example.test"]
    assert invoke("user", "del", tree, "a@example.test").exit_code == 0
    assert invoke("user", "del", tree, "a@example.test").exit_code == 67
    assert invoke("user", "list", tree).stdout.split() == ["b@example.test"]
    assert (tree / "mail" / "example.test" / "a" / "new").is_dir()  # mail is kept


def test_config_given_by_option_or_environment(tree):
    conf = tree / "pymail.toml"
    assert invoke("user", "add", "-C", conf, "c@example.test", "--password-stdin", input="x\n").exit_code == 0
    assert invoke("-C", conf, "user", "list").stdout.split() == ["c@example.test"]
    assert invoke("user", "list", env={"PYMAIL_CONFIG": str(conf)}).stdout.split() == ["c@example.test"]
    assert invoke("config", "check", "-C", conf).exit_code == 0


def test_broken_config_is_exit_78_with_key(tree):
    (tree / "pymail.toml").write_text('domains = "notalist"\nbogus = 1\n')
    result = invoke("user", "list", tree)
    assert result.exit_code == 78
    assert "pymail: domains: must be a list of strings" in result.stderr
    assert "pymail: bogus: unknown key" in result.stderr
    missing = invoke("user", "list", tree / "nope")
    assert missing.exit_code == 78 and "no such file" in missing.stderr


# -- config ---------------------------------------------------------------------------------


def test_config_check_ok(tree):
    result = invoke("config", "check", tree)
    assert result.exit_code == 0, result.output
    *notes, last = result.stdout.strip().splitlines()
    assert last == f"config OK: {(tree / 'pymail.toml').absolute()}"
    assert notes and all(line.startswith("note: ") for line in notes)  # who the runner runs as
    assert notes[0].startswith(f"note: qrunner runs as uid {os.geteuid()} ")


def test_config_check_finds_problems(tree):
    (tree / "tls" / "key.pem").write_text("garbage\n")
    (tree / "users").write_text("good@example.test:{PLAIN}x\nbroken\n")
    shutil.rmtree(tree / "queue")
    conf = tree / "pymail.toml"
    good = conf.read_text()
    conf.write_text(good.replace("# max_recipients = 100", "max_recipients = -1"))
    result = invoke("config", "check", tree)
    assert result.exit_code == 78
    assert result.stdout == "smtpd.max_recipients: must not be negative\n"
    conf.write_text(good)
    result = invoke("config", "check", tree)
    assert result.exit_code == 78
    lines = result.stdout.splitlines()
    assert any(line.startswith("paths.tls_cert: ") for line in lines)
    assert any(line.startswith("paths.users: ") and ":2: " in line for line in lines)
    assert any(line.startswith("paths.queue: ") for line in lines)
    assert "config OK" not in result.stdout


def test_config_show_every_parameter_as_toml(tree):
    result = invoke("config", "show", tree)
    assert result.exit_code == 0
    names = [line.split(" = ", 1)[0] for line in result.stdout.splitlines()]
    assert names == [p.name for p in config.PARAMS]
    shown = tomllib.loads(result.stdout)  # pasteable into pymail.toml
    assert shown["smtpd"]["max_recipients"] == 100 and shown["domains"] == ["example.test"]


def test_config_show_n_only_set_keys(tree):
    (tree / "pymail.toml").write_text('domains = ["a.test"]\n[smtpd]\nmax_recipients = 7\n')
    result = invoke("config", "show", "-n", tree)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ['domains = ["a.test"]', "smtpd.max_recipients = 7"]


def test_tls_contexts_from_init_files(template, tmp_path):
    import ssl

    from pymta.lib import tls

    cert, key = template / "tls" / "cert.pem", template / "tls" / "key.pem"
    ctx = tls.server_context(cert, key)
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert tls.server_context(cert, key) is ctx  # cached while the files are unchanged
    with pytest.raises(tls.TLSConfigError, match="no such file"):
        tls.server_context(tmp_path / "none.pem", key)
    (tmp_path / "bad.pem").write_text("garbage\n")
    with pytest.raises(tls.TLSConfigError, match="cannot load"):
        tls.server_context(cert, tmp_path / "bad.pem")
    assert tls.client_context(False).verify_mode == ssl.CERT_NONE
    assert tls.client_context(True).check_hostname
    with pytest.raises(tls.TLSConfigError):
        tls.make_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", "evil/CN=x")


def test_plugin_groups_can_be_added():
    import click

    @click.command("hello-test")
    def hello():
        click.echo("hi")

    cli.add_command(hello)
    try:
        assert invoke("hello-test").stdout == "hi\n"
    finally:
        cli.commands.pop("hello-test")


# (the supervisor itself: tests/test_supervisor.py)


# -- `pymail run`, for real -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pymail_run_serves_smtp_and_stops_on_sigterm(tree, tmp_path):
    ports = {service: free_port() for service in cli_mod.SERVICES}
    args = [a for service, port in ports.items() for a in (f"--{service}-port", str(port))]
    out, err = open(tmp_path / "out", "w"), open(tmp_path / "err", "w")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bin" / "pymail"), "run", str(tree), *args], stdout=out, stderr=err, cwd=tmp_path
    )
    try:
        banner = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not banner:
            assert proc.poll() is None, (tmp_path / "err").read_text()
            try:
                with socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=5) as sock:
                    sock.settimeout(5)
                    while not banner.endswith(b"\n"):
                        chunk = sock.recv(512)
                        if not chunk:
                            break
                        banner += chunk
            except OSError:
                time.sleep(0.1)
        assert banner.startswith(b"220"), (tmp_path / "err").read_text()
        assert f"127.0.0.1:{ports['smtp']}" in (tmp_path / "out").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        with pytest.raises(OSError):  # the children are gone too
            socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=2).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()


def test_config_check_reports_aliases_problems_with_line_numbers(tmp_path):
    from click.testing import CliRunner

    from pymta.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["init", str(tmp_path / "d"), *AS_ROOT]).exit_code == 0
    (tmp_path / "d" / "aliases").write_text("# aliases\nok: alice\nbroken line without colon\nempty:\n")
    result = runner.invoke(cli, ["config", "check", str(tmp_path / "d")])
    assert result.exit_code == 78
    assert "aliases:3:" in result.output and "aliases:4:" in result.output
