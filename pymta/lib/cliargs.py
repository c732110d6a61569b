"""The one hand-written command-line parser, a POSIX/GNU ``getopt``.

Three kinds of program cannot use click (the admin CLI, the queue runner,
pymda-local and pymta-queue do):

* the network daemons, which under inetd start a fresh Python for every
  connection: click costs ~15 ms of imports, argparse ~5 ms, this nothing;
* ``sendmail``/``mailq``/``newaliases``, whose command line is sendmail's
  (``-bp``, ``-oi``, ``-ti``, ``-q30m``, recipients anywhere);
* ``pymda-deliver``, whose ``-m VAR=value RCFILE ARGS`` is procmail's.

``getopt(argv, "C:d:n", ["dry-run", "queue-id="])`` returns the options in
order as ``(name, value)`` pairs (``("-C", "file")``, ``("--dry-run", "")``)
and the operands. Short options cluster (``-ti``) and take a value joined
or as the next word; long options take ``--name=value`` or ``--name value``.
Operands may come between options (GNU order), ``--`` ends the options, and
an option named in ``stop_after`` makes every word after it an operand.
Mistakes raise ``UsageError``; ``fail`` prints it the usual way and exits 64
(EX_USAGE), as sysexits.h asks.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

CONFIG_HELP = "Configuration file (default: $PYMAIL_CONFIG, then /etc/pymail/pymail.toml)."


class UsageError(Exception):
    pass


def getopt(
    argv: Iterable[str],
    short: str,
    long: Iterable[str] = (),
    *,
    stop_after: str = "",
) -> tuple[list[tuple[str, str]], list[str]]:
    words = list(argv)
    takes_value = {f"-{c}": short[i + 1 : i + 2] == ":" for i, c in enumerate(short) if c != ":"}
    for name in long:
        takes_value[f"--{name.rstrip('=')}"] = name.endswith("=")
    options: list[tuple[str, str]] = []
    operands: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            operands += words[i:]
            break
        if not word.startswith("-") or word == "-":
            operands.append(word)
            continue
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if name not in takes_value:
                raise UsageError(f"unrecognized option '{name}'")
            if takes_value[name] and not eq:
                if i >= len(words):
                    raise UsageError(f"option '{name}' requires an argument")
                value, i = words[i], i + 1
            elif eq and not takes_value[name]:
                raise UsageError(f"option '{name}' doesn't allow an argument")
            options.append((name, value))
        else:
            j = 1
            while j < len(word):
                name = f"-{word[j]}"
                if name not in takes_value:
                    raise UsageError(f"invalid option -- '{word[j]}'")
                if takes_value[name]:
                    value = word[j + 1 :]
                    if not value:
                        if i >= len(words):
                            raise UsageError(f"option requires an argument -- '{word[j]}'")
                        value, i = words[i], i + 1
                    options.append((name, value))
                    break
                options.append((name, ""))
                j += 1
        if stop_after and options and options[-1][0] == stop_after:
            operands += words[i:]
            break
    return options, operands


def fail(prog: str, usage: str, error: UsageError) -> None:
    """Print the usage line and the mistake, and exit 64 (EX_USAGE)."""
    sys.stderr.write(f"{usage}\n{prog}: error: {error}\n")
    raise SystemExit(64)


def click_main(command, argv: list[str] | None, prog: str) -> int:
    """Run a click command as a program's ``main``: its exit status, with
    usage mistakes exiting 64 (EX_USAGE) instead of click's 2."""
    import click  # noqa: PLC0415 lazy (the daemons import this module)

    try:
        result = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        return 64
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        sys.stderr.write("Aborted!\n")
        return 1
    return result if isinstance(result, int) else 0
