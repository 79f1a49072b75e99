"""The ``advrank`` command: one entry point, one subcommand per job.

Each subcommand parses and validates its options, calls one library function and prints the
figures (``--json``: one strict JSON object on stdout); progress and logs go to stderr. Every
:class:`AdvrankError` becomes one line ``advrank: error: ...`` and exit status 2. Choices
(datasets, models, attacks, defenses...) come from the registry at run time, after the
plugins named by ``--plugin`` or installed under the ``advrank.plugins`` entry point loaded.
"""

from __future__ import annotations

import argparse
import sys

from advrank import __version__
from advrank.cli.options import HelpFormatter, Parser
from advrank.errors import AdvrankError
from advrank.registry import load_entry_point_plugins, load_plugin

COMMAND_MODULES = ("advrank.cli.train", "advrank.cli.attack", "advrank.cli.blackbox",
                   "advrank.cli.curves", "advrank.cli.robustness")


def _plugins(argv: list[str]) -> list[str]:
    """The values of every ``--plugin X`` / ``--plugin=X`` in ``argv`` (wherever they are)."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--plugin":
            if i + 1 >= len(argv):
                raise AdvrankError("--plugin needs a module name or a .py file")
            found.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            found.append(arg.partition("=")[2])
    return found


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = Parser(prog="advrank", formatter_class=HelpFormatter,
                    description="Attack, measure and harden deep ranking models against "
                                "adversarial perturbations (Zhou et al., ECCV 2020).")
    parser.add_argument("--version", action="version", version=f"advrank {__version__}")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import a plugin (module name or .py file) that registers models, "
                             "datasets, attacks or defenses; may be repeated")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, HelpFormatter)
    for p in sub.choices.values():  # --plugin is accepted after the subcommand too
        p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                       help="import a plugin module (see advrank --help)")
    return parser


def _run(argv: list[str]) -> int:
    load_entry_point_plugins()
    for plugin in _plugins(argv):
        load_plugin(plugin)
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except AdvrankError as exc:
        print(f"advrank: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("advrank: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, permissions: the system's words, on one line
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"advrank: error: {exc.strerror or exc}{where}", file=sys.stderr)
    except MemoryError:
        print("advrank: error: out of memory; lower --batch-size", file=sys.stderr)
    return 2


__all__ = ["build_parser", "main"]
