"""argparse for the programs other programs call: usage errors exit 64
(EX_USAGE, as sysexits.h asks) instead of argparse's 2."""

from __future__ import annotations

import argparse
import sys

from pymta.lib import sysexits


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(sysexits.EX_USAGE)
