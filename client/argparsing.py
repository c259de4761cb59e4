"""Argument parsing shared by the ``mtserve`` commands: short errors that say what to do.

argparse answers a mistyped flag with the whole usage (dozens of flags for ``mtserve serve``) and then
the error; here the error comes alone, with the nearest known flag when there is one, and a pointer to
``--help``. Value parsers have names that read well in argparse's "invalid <name> value" messages.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):
            unknown = [a for a in message.removeprefix("unrecognized arguments: ").split() if a.startswith("-")]
            known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
            hints = []
            for flag in unknown:
                close = difflib.get_close_matches(flag.split("=", 1)[0], known, n=1, cutoff=0.6)
                hints.append(f"unknown flag {flag}" + (f"; did you mean {close[0]}?" if close else ""))
            if hints:
                message = "; ".join(hints)
        sys.stderr.write(f"{self.prog}: error: {message}\n(`{self.prog} --help` lists every flag)\n")
        sys.exit(2)


def integer(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def number(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


__all__ = ["ArgumentParser", "integer", "number"]
