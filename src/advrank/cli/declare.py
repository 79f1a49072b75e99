"""From parsed options to the library's declarations: the TargetSpec of the model options,
the size, T, kind options, execution policy and threat they ask for (each validated before
any work), and the targets and indexes they name, loaded by the library."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from advrank.attacks.selection import num_attacks_for as num_attacks_rule
from advrank.attacks.threat import LinfThreatModel
from advrank.cli.groups import kind_dest
from advrank.cli.parsing import log
from advrank.core.execution import ExecutionPolicy
from advrank.errors import AdvrankError
from advrank.experiments.target import Loader, Target, TargetSpec
from advrank.registry import ATTACKS


def num_attacks_for(num_attacks: int | None, n: int) -> int:
    """T for ``--num-attacks`` on an n-item collection, without the note (for checks)."""
    return num_attacks_rule(num_attacks, n)


def num_attacks_from_args(args, n: int) -> int:
    """T for ``--num-attacks`` on an n-item collection (the note goes to stderr)."""
    say = log(args)
    return num_attacks_rule(args.num_attacks, n, lambda m: say(f"advrank: note: {m}"))


def resolve_size(args, attacks: Sequence[str]):
    """The one size value of ``--k``/``--w``/``--m``; ``--w`` for a QA attack (or ``--m`` for
    CA) is refused rather than silently used."""
    given = {name: getattr(args, name) for name in ("k", "w", "m")
             if getattr(args, name) is not None}
    if len(given) > 1:
        raise AdvrankError(f"give the size once: --{' and --'.join(given)} were both given")
    if not given:
        return args.k_default
    (name, value), = given.items()
    if name != "k":
        for attack in attacks:
            size_name = ATTACKS.get(attack).size_name
            if size_name != name:
                raise AdvrankError(f"--{name} does not apply to {attack} (its size is "
                                   f"{size_name or 'not named'}; --k works for every attack)")
    return value


def kind_options(args) -> dict[str, Any]:
    """The attack-kind options given on the command line (None = the kind's default), by
    parameter name, for every parameter ``add_kind_options`` made a flag for."""
    return {name: getattr(args, kind_dest(name)) for name in getattr(args, "kind_params", ())}


def policy_from_args(args) -> ExecutionPolicy:
    """The :class:`~advrank.core.execution.ExecutionPolicy` of ``add_execution``'s options."""
    return ExecutionPolicy(getattr(args, "precision", "fp32"),
                           getattr(args, "memory_budget", None),
                           bool(getattr(args, "compile", False)))


def target_specs(args, cache_dir: str | None = None) -> list[tuple[str | None, TargetSpec]]:
    """The ``(NAME or None, TargetSpec)`` of each model of ``add_target_options(labelled=True)``,
    in command-line order, validated; a plain per-model option applies to every ``--model``,
    ``NAME=VALUE`` to that model alone (and wins over the plain one)."""
    given = getattr(args, "targets", None) or []
    if not given:
        raise AdvrankError("give a model: --checkpoint FILE or --model SOURCE (with --data)")
    names = [name for _, name, _ in given if name is not None]
    if len(set(names)) != len(names):
        raise AdvrankError(f"model names must be distinct, got {', '.join(names)}")
    own: list[dict[str, Any]] = [{} for _ in given]
    for key in args.model_options:
        values = sorted(getattr(args, key) or [], key=lambda v: v[0] is not None)
        seen: set = set()
        for name, value in values:  # plain values first, named ones override them
            option = f"--{key.replace('_', '-')}"
            if name in seen:
                raise AdvrankError(f"{option} is given twice for "
                                   + (f"model {name}" if name else "every model"))
            if name is None and not any(form == "model" for form, _, _ in given):
                raise AdvrankError(f"{option} applies to --model, not to --checkpoint (a "
                                   "checkpoint carries its own weights, metric and input size)")
            if name is not None and name not in names:
                raise AdvrankError(f"{option} {name}=...: no model is named {name} (the models: "
                                   f"{', '.join(names) or 'none named'})")
            seen.add(name)
            for i, (form, label, _) in enumerate(given):
                if label == name or (name is None and form == "model"):
                    own[i][key] = value
    shared = {"data": args.data, "cache_dir": args.cache_dir or cache_dir,
              "workers": args.workers, "query_fraction": args.query_fraction,
              "max_unreadable": args.max_unreadable}
    return [(label, TargetSpec(**{form: value}, **shared, **own[i]).validate())
            for i, (form, label, value) in enumerate(given)]


def spec_from_args(args, cache_dir: str | None = None) -> TargetSpec:
    """The :class:`~advrank.experiments.target.TargetSpec` of the parsed options, not yet
    validated (for a library function that validates it in its own order)."""
    return TargetSpec(
        checkpoint=args.checkpoint, model=args.model, data=args.data, metric=args.metric,
        weights=args.weights, pretrained=args.pretrained, layer=args.layer,
        embed_dim=args.embed_dim,
        input_size=args.input_size, mean=args.mean, std=args.std,
        cache_dir=args.cache_dir or cache_dir, workers=args.workers,
        query_fraction=args.query_fraction, max_unreadable=args.max_unreadable,
        allow_outside_root=args.allow_outside_root)


def target_spec(args, cache_dir: str | None = None) -> TargetSpec:
    """:func:`spec_from_args`, validated (exactly one of --checkpoint and --model; source
    options only with --model)."""
    return spec_from_args(args, cache_dir).validate()


def loader_from_args(args) -> Loader:
    """How the command loads its models: ``--device``, ``--data-root``, ``--download``,
    progress and notes on stderr unless ``--quiet``."""
    return Loader(args.device, args.data_root, args.download, progress=not args.quiet,
                  log=log(args))


def load_target_from_args(args, cache_dir: str | None = None, split: str = "test",
                          check: Callable[[int], object] | None = None) -> Target:
    """The target of the parsed model options, loaded by the library; ``check(|X|)`` refuses
    options that do not fit the collection before it is embedded; with ``--queries`` a model
    without a text tower is refused before that."""
    return loader_from_args(args).load(target_spec(args, cache_dir), split, check,
                                       needs_text=getattr(args, "queries", None) is not None)


def index_from_args(args, target: Target):
    """The ``--index`` search over the target's gallery (None without ``--index``), saved in
    ``--cache-dir`` when one is given."""
    return loader_from_args(args).index(target, getattr(args, "index", None),
                                        getattr(args, "cache_dir", None))


def upload_threat(args, eps: float = 0.0) -> LinfThreatModel:
    """The threat model at ``eps`` with ``add_pipeline``'s options (validated before any
    work: --through-pipeline needs --pipeline)."""
    return LinfThreatModel(eps, getattr(args, "step_size", None), getattr(args, "steps", None),
                           bool(getattr(args, "random_start", False)),
                           pipeline=getattr(args, "pipeline", None),
                           through_pipeline=bool(getattr(args, "through_pipeline", False)))
