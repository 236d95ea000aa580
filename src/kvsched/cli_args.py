"""The command line's argument parser: argparse, with errors told by the subcommand at fault.

Plain argparse hands a subcommand's unknown arguments up to the top-level parser, which then
prints the top-level usage; `Parser.parse_args` reports them with the subcommand's usage
instead, and suggests the closest flag ("did you mean --capacity?"). A misspelt choice
(a subcommand name, `--kind latency-cfd`) gets the closest choice the same way. Python 3.11's
argparse has no `suggest_on_error`; this is that, for every parser of the CLI.
"""

from __future__ import annotations

import argparse
import math
import re

_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


def closest(word: str, candidates) -> str | None:
    import difflib  # only for an error: not imported by every start

    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def unrecognized_message(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """"unrecognized arguments: --capcity 5; did you mean --capacity?" for `parser`'s flags."""
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    hints = []
    for arg in extras:
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            match = closest(name, flags)
            if match and match != name:
                hints.append((name, match))
    message = f"unrecognized arguments: {' '.join(extras)}"
    if len(hints) == 1:
        return message + f"; did you mean {hints[0][1]}?"
    if hints:
        return message + "; did you mean " + ", ".join(f"{m} (for {n})" for n, m in hints) + "?"
    return message


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors come from the (sub)command at fault, with suggestions."""

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._chosen(namespace)
            parser.error(unrecognized_message(parser, extras))
        return namespace

    def _chosen(self, namespace) -> argparse.ArgumentParser:
        """The innermost subcommand parser the command line picked (self without subcommands)."""
        parser: argparse.ArgumentParser = self
        while True:
            sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
            name = getattr(namespace, sub.dest, None) if sub is not None and sub.dest != argparse.SUPPRESS else None
            if name not in (sub.choices if sub is not None else {}):
                return parser
            parser = sub.choices[name]

    def error(self, message: str):
        found = _INVALID_CHOICE.search(message)
        if found:
            match = closest(found.group(1), re.findall(r"'([^']*)'", found.group(2)))
            if match:
                message += f"; did you mean {match!r}?"
        super().error(message)


def positive(kind: type):
    """An argparse type: a finite number of `kind` > 0 (the flag is named in argparse's error)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'} > 0, "
                                             f"got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a finite number'} > 0, "
                                             f"got {text!r}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse
