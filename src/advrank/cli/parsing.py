"""Parser building and output: one parser class whose errors are one line, the help
formatter, the declared :class:`Command`, and JSON/text output (:func:`emit`, :func:`log`)."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass

from advrank.cli.groups import add_common
from advrank.core.io import strict_json
from advrank.core.meta import ModelMeta
from advrank.errors import AdvrankError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: every mistake becomes an :class:`AdvrankError`, which
    ``main`` prints as ``advrank: error: ...`` with exit status 2."""

    def error(self, message: str):
        where = self.prog.removeprefix("advrank").strip()  # the subcommand, if any
        commands = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        if commands and "COMMAND" in message:  # `advrank` alone: say what to type
            message = (f"give a command: {', '.join(commands[0].choices)} "
                       "(advrank COMMAND --help for each)")
        raise AdvrankError(f"{where}: {message}" if where else message)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (unless its help already says it, or there is none)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == [] or \
                default is argparse.SUPPRESS or not action.option_strings or action.nargs == 0:
            return text
        if isinstance(default, (list, tuple)):
            default = ",".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


def _paragraphs(doc: str | None) -> list[str]:
    """A docstring's paragraphs as ``--help`` shows them (raw): each on one line, for the
    terminal to wrap."""
    return [" ".join(paragraph.split()) for paragraph in inspect.cleandoc(doc or "").split("\n\n")]


@dataclass(frozen=True)
class Command:
    """One subcommand, declared: its ``name``, the function it ``run`` s, and ``options(p)``,
    which adds its own options in the order ``--help`` lists them (composed from the shared
    groups of this module). The docstring of ``options`` is the command's text: its first
    paragraph the one-line help, the others the description (unless ``description`` is
    given). The parser itself, the shared ``common`` options after the command's own and the
    function to run come from :meth:`add_to`, once for every command."""

    name: str
    run: Callable[[argparse.Namespace], None]
    options: Callable[[argparse.ArgumentParser], None]
    description: str | None = None
    common: Callable[[argparse.ArgumentParser], None] = add_common

    def add_to(self, sub, formatter: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
        """The command's parser, added to the ``add_subparsers`` action ``sub``."""
        summary, *text = _paragraphs(self.options.__doc__)
        p = sub.add_parser(self.name, help=summary, formatter_class=formatter,
                           description=self.description or "\n\n".join(text))
        self.options(p)
        self.common(p)
        p.set_defaults(func=self.run)
        return p


def emit(args, obj: dict, text: str) -> None:
    """One strict JSON object (``--json``) or the text, on stdout (rank 0 alone under
    torchrun: every process holds the same result)."""
    from advrank.core import distributed

    if not distributed.is_main():
        return
    if getattr(args, "json", False):
        print(strict_json(obj))
    else:
        print(text)


def log(args) -> Callable[[str], None]:
    """Progress lines on stderr unless ``--quiet``."""
    from advrank.core import distributed

    if getattr(args, "quiet", False) or not distributed.is_main():
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr)


def model_label(path, meta: ModelMeta) -> str:
    """How text output names a model: its file name and what it is (two c2f1/cosine
    checkpoints stay apart), e.g. ``robust.pt (c2f1/cosine)``."""
    from pathlib import Path

    return f"{Path(str(path)).name} ({meta.arch}/{meta.metric})"
