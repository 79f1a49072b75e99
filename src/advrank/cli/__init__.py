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
from advrank.cli.parsing import HelpFormatter, Parser
from advrank.errors import AdvrankError
from advrank.registry import load_entry_point_plugins, load_plugin

COMMAND_MODULES = ("advrank.cli.train", "advrank.cli.attack", "advrank.cli.blackbox",
                   "advrank.cli.curves", "advrank.cli.audit", "advrank.cli.robustness",
                   "advrank.cli.serve")
#: the commands that share their work among torchrun's processes (the others would only repeat
#: it in every process, so they are refused there)
DISTRIBUTED_COMMANDS = ("attack", "grid", "train", "evaluate")


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


def load_plugins(argv: list[str]) -> None:
    """Import the installed and the ``--plugin`` plugins (inside :func:`main`'s error
    handler: a broken plugin is one error line). With ``--help``/``-h``/``--version`` a broken
    plugin is only a warning, so that help and version always work."""
    lenient = any(a in ("-h", "--help", "--version") for a in argv)
    try:
        load_entry_point_plugins()
        for plugin in _plugins(argv):
            load_plugin(plugin)
    except AdvrankError as exc:
        if not lenient:
            raise
        print(f"advrank: warning: {exc} (its parts are missing below)", file=sys.stderr)


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
    for name in COMMAND_MODULES:  # each declares its commands (see options.Command)
        for command in importlib.import_module(name).COMMANDS:
            command.add_to(sub, HelpFormatter)
    for p in sub.choices.values():  # --plugin is accepted after the subcommand too
        p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                       help="import a plugin module (see advrank --help)")
    return parser


def _run(argv: list[str]) -> int:
    from advrank.core.runtime import set_command

    set_command(argv)  # results record this command, whoever called main()
    load_plugins(argv)
    args = build_parser().parse_args(argv)
    from advrank.cli.parsing import log
    from advrank.core import distributed

    if distributed.launched():
        if args.command not in DISTRIBUTED_COMMANDS:
            raise AdvrankError(f"{args.command} does not run under torchrun with several "
                               f"processes (commands that do: {', '.join(DISTRIBUTED_COMMANDS)})"
                               "; run it as one process")
        distributed.init_from_env(getattr(args, "device", "auto"))
    for note in getattr(args, "deprecations", None) or []:  # old spellings, still accepted
        log(args)(note)  # (rank 0 alone under torchrun)
    try:
        args.func(args)
    finally:
        distributed.shutdown()
    return 0


def _error(message: object) -> int:
    """Print ``advrank: error: MESSAGE`` as one line (line breaks in it, e.g. from a path,
    are shown escaped) and return exit status 2."""
    from advrank.core import distributed

    text = str(message).replace("\r", "\\r").replace("\n", "\\n")
    # a file name that is not UTF-8 (surrogate escapes) is shown escaped, never a traceback
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if distributed.last_rank() == 0:  # under torchrun, the first process alone says it
        print(f"advrank: error: {text}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except AdvrankError as exc:
        return _error(exc)
    except KeyboardInterrupt:
        print("advrank: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, permissions: the system's words, on one line
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return _error(f"{exc.strerror or exc}{where}")
    except MemoryError:
        return _error("out of memory; lower --batch-size")
    finally:  # a library call made after this command must not record it as its own
        from advrank.core.runtime import set_command

        set_command(None)


__all__ = ["build_parser", "main"]
