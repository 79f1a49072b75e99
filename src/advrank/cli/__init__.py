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
from pathlib import Path

from advrank import __version__
from advrank.cli.parsing import HelpFormatter, Parser
from advrank.errors import AdvrankError
from advrank.registry import load_entry_point_plugins, load_plugin

#: every command in ``--help``'s order: its name, the module that declares it and its one-line
#: help (the first paragraph of its options' docstring; tests/cli/test_cli.py keeps the two
#: equal), so that ``advrank --help`` and a mistyped command import no module of a command
#: (nor torch): the top-level help takes well under a second
COMMAND_TABLE = (
    ("train", "advrank.cli.train", "train an embedding model (metric learning)"),
    ("evaluate", "advrank.cli.train", "Recall@K, mAP (and NMI) of a model on its collection"),
    ("export", "advrank.cli.train", "weights-only copy of a checkpoint (no optimiser state)"),
    ("attack", "advrank.cli.attack", "run T attacks of one kind and report normalized ranks"),
    ("grid", "advrank.cli.attack", "the paper's full attack grid (Tables 1-4), resumable"),
    ("transfer", "advrank.cli.blackbox",
     "transfer attack: adversarial examples from one model, ranked by another"),
    ("transfer-matrix", "advrank.cli.blackbox", "the full transfer matrix of Table 5, resumable"),
    ("universal", "advrank.cli.blackbox",
     "universal (image-agnostic) perturbation, I-CA/I-QA (Table 6)"),
    ("curves", "advrank.cli.curves",
     "Fig. 2: attack ranks and max embedding shift vs eps, per checkpoint"),
    ("demo", "advrank.cli.curves",
     "the main job on the embedded digits: train, evaluate, attack, defend"),
    ("audit", "advrank.cli.audit",
     "audit a retrieval model on an image collection: report.html + .json"),
    ("robustness", "advrank.cli.robustness",
     "robrank's Empirical Robustness Score (ERS) of a model"),
    ("serve", "advrank.cli.serve", "serve a model's gallery behind an HTTP search API"),
)
COMMAND_MODULES = tuple(dict.fromkeys(module for _, module, _ in COMMAND_TABLE))
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


def command_of(argv: list[str]) -> str | None:
    """The command word of ``argv`` (the first word that is not a top-level option or the
    value of ``--plugin``), or None."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--plugin":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None, light: bool = False) -> argparse.ArgumentParser:
    """The parser of every command (``command``: of that one alone, importing its module
    only). ``light``: the commands' names and one-line helps alone, from
    :data:`COMMAND_TABLE` (for ``--help``, ``--version`` and a command-less line)."""
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
    if light:
        for name, _, summary in COMMAND_TABLE:
            sub.add_parser(name, help=summary, add_help=False)
        return parser
    modules = COMMAND_MODULES if command is None else \
        tuple(m for name, m, _ in COMMAND_TABLE if name == command)
    for name in modules:  # each declares its commands (see parsing.Command)
        for declared in importlib.import_module(name).COMMANDS:
            if command in (None, declared.name):
                declared.add_to(sub, HelpFormatter)
    for p in sub.choices.values():  # --plugin is accepted after the subcommand too
        p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                       help="import a plugin module (see advrank --help)")
    return parser


def _unknown_command(word: str) -> AdvrankError:
    import difflib

    names = [name for name, _, _ in COMMAND_TABLE]
    close = difflib.get_close_matches(word, names, n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return AdvrankError(f"unknown command {word!r}{hint} (commands: {', '.join(names)})")


def _run(argv: list[str]) -> int:
    command = command_of(argv)
    if command is None:  # --help, --version or nothing: no command module, no torch
        if _plugins(argv):
            load_plugins(argv)
        build_parser(light=True).parse_args(argv)
        return 0
    if command not in {name for name, _, _ in COMMAND_TABLE}:
        raise _unknown_command(command)
    from advrank.core.runtime import set_command

    set_command(argv)  # results record this command, whoever called main()
    load_plugins(argv)
    args = build_parser(command).parse_args(argv)
    from advrank.cli.parsing import log
    from advrank.core import distributed
    from advrank.core.io import first_missing, remove_empty_tree

    if distributed.launched():
        if args.command not in DISTRIBUTED_COMMANDS:
            raise AdvrankError(f"{args.command} does not run under torchrun with several "
                               f"processes (commands that do: {', '.join(DISTRIBUTED_COMMANDS)})"
                               "; run it as one process")
        distributed.init_from_env(getattr(args, "device", "auto"))
    for note in getattr(args, "deprecations", None) or []:  # old spellings, still accepted
        log(args)(note)  # (rank 0 alone under torchrun)
    out = getattr(args, "out", None)
    created = first_missing(Path(out)) if isinstance(out, (str, Path)) and out else None
    try:
        args.func(args)
    except BaseException:  # refused or interrupted: no empty output folder left behind
        if created is not None:
            remove_empty_tree(created)
        raise
    finally:
        distributed.shutdown()
    return 0


def _error(message: object) -> int:
    """Print ``advrank: error: MESSAGE`` as one line (line breaks in it, e.g. from a path,
    are shown escaped) and return exit status 2."""
    text = str(message).replace("\r", "\\r").replace("\n", "\\n")
    # a file name that is not UTF-8 (surrogate escapes) is shown escaped, never a traceback
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if _first_process():  # under torchrun, the first process alone says it
        print(f"advrank: error: {text}", file=sys.stderr)
    return 2


def _first_process() -> bool:
    """Whether this process says the error: rank 0 under torchrun, else always. A process
    that never imported torch (a mistyped command, a bad option) joined no group: it says
    its error without importing torch now (torch's own launcher test then decides)."""
    if "torch" not in sys.modules:
        return True
    from advrank.core import distributed

    return distributed.last_rank() == 0


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
        if "advrank.core.runtime" in sys.modules:
            sys.modules["advrank.core.runtime"].set_command(None)


__all__ = ["COMMAND_TABLE", "build_parser", "command_of", "main"]
