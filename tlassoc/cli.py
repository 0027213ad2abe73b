"""The ``tlassoc`` command: list recipes and experiments, train a recipe, reproduce an experiment.

Every setting is a flag generated from the configuration dataclasses, named by its dotted path
(``--model.d_model 64``, ``--train.lr 0.05``, ``--task.seq_len 128``) with its help text and
default taken from the field, so flags and configuration cannot drift apart. ``--set
PATH=VALUE`` does the same for any path, including an experiment's own fields (``--set
seeds=0,1,2``); settings apply in command-line order.

Bad input (unknown recipe, unknown field, ill-typed value, unwritable folder) prints one line on
stderr and exits with status 2, never a traceback. ``tlassoc --help`` imports neither torch nor
TransformerLens.

Example:
    >>> main(["train", "no-such-recipe", "--out", "x"])  # doctest: +SKIP
    tlassoc: error: unknown recipe 'no-such-recipe'; expected one of [...]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tlassoc.config import _fields


class CLIError(Exception):
    """A user error reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIError(message)


class _Assign(argparse.Action):
    """Collects ``(path, text)`` settings in command-line order into ``namespace.settings``."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        settings = getattr(namespace, "settings", None) or []
        if self.dest == "set":
            path, eq, text = str(values).partition("=")
            if not eq or not path:
                raise CLIError(f"--set {values!r}; expected PATH=VALUE, e.g. train.lr=0.05")
            settings.append((path.strip(), text))
        else:
            settings.append((self.dest, values))
        namespace.settings = settings


def _writable_dir(path: str) -> Path:
    if not path.strip():
        raise CLIError("--out ''; expected a folder name")
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # an unnamed file where the OS allows (O_TMPFILE): a kill here leaves nothing behind
        with tempfile.TemporaryFile(dir=folder, prefix=".tlassoc-write-test", suffix=".tmp"):
            pass
    except OSError as err:
        raise CLIError(f"output folder {path!r} is not writable: {err.strerror or err}") from None
    return folder


def _add_config_flags(parser: argparse.ArgumentParser, config: Any) -> None:
    """One flag per leaf field of ``config`` (grouped by section), help from the docstrings."""
    groups: dict[str, Any] = {}
    for path, _tp, _default, doc in _fields.walk_fields(type(config)):
        section = path.split(".")[0] if "." in path else "experiment"
        if section not in groups:
            groups[section] = parser.add_argument_group(f"{section} settings")
        current = _get(config, path)
        help_text = f"{doc} (default: {_fields.describe(current)})".replace("%", "%%")
        groups[section].add_argument(
            f"--{path}", dest=path, action=_Assign, metavar="VALUE", help=help_text
        )
    parser.add_argument(
        "--set",
        dest="set",
        action=_Assign,
        metavar="PATH=VALUE",
        help="set any setting by its dotted path (repeatable; applied in order)",
    )


def _get(config: Any, path: str) -> Any:
    value = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _apply(config: Any, settings: list[tuple[str, str]]) -> Any:
    for path, text in settings:
        tp = _fields.resolve(type(config), path)
        config = _fields.replace_path(config, path, _fields.parse_text(text, tp, path))
    return config


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _base_parser() -> _Parser:
    parser = _Parser(
        prog="tlassoc",
        description="Induction heads as associative memories, on TransformerLens.",
        epilog="`tlassoc COMMAND --help` lists a command's settings with their defaults.",
    )
    return parser


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``tlassoc``; the settings flags of ``train``/``reproduce`` are
    generated for the recipe or experiment named in ``argv`` (configs load only then)."""
    argv = list(argv or [])
    parser = _base_parser()
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("recipes", help="list the named runs with their measured run times")
    sub.add_parser("experiments", help="list the experiments `reproduce` can run")
    t = sub.add_parser(
        "train",
        help="train a recipe (see `tlassoc recipes`)",
        usage="tlassoc train RECIPE --out DIR [--resume] [--SECTION.FIELD VALUE ...] "
        "[--set PATH=VALUE ...]",
    )
    t.add_argument("recipe", help="recipe name")
    _run_options(t)
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (its checkpoints/, metrics.jsonl and run.json)",
    )
    t.add_argument(
        "--accept-changes",
        action="store_true",
        help="with --resume: continue although settings differ from the checkpoint's",
    )
    t.set_defaults(command_line=" ".join(["tlassoc", *argv]))
    r = sub.add_parser(
        "reproduce",
        help="run an experiment and write its report",
        usage="tlassoc reproduce [EXPERIMENT] --out DIR [--quick] [--SECTION.FIELD VALUE ...] "
        "[--set PATH=VALUE ...]",
    )
    r.add_argument("experiment", nargs="?", help="experiment name (default: length_generalization)")
    _run_options(r)
    r.add_argument("--quick", action="store_true", help="the experiment's small setting")
    r.add_argument(
        "--all",
        action="store_true",
        help="run every experiment into OUT/<name>/ and write an index OUT/report.md",
    )
    r.add_argument(
        "--in-process",
        action="store_true",
        help="run the seeds one after another in this process (default: each seed a trial on "
        "a local Ray, in parallel over this machine's cores, resumable; needs tlassoc[sweep])",
    )
    r.add_argument(
        "--address",
        default=None,
        help="join this Ray cluster for the seeds ('auto' or 'ray://HOST:PORT'; default: a "
        "local Ray)",
    )
    sw = _sweep_parsers(sub, argv)
    command, name = _command_and_name(argv)
    if command == "train" and name:
        from tlassoc import recipes

        _add_config_flags(t, recipes.get(name))
    elif command == "reproduce" and "--all" not in argv:
        from tlassoc import experiments

        exp = experiments.get(name or experiments.DEFAULT)
        _add_config_flags(r, exp.quick_config() if "--quick" in argv else exp.default_config())
    elif command == "sweep" and name:
        from tlassoc import experiments

        exp = experiments.get(name)
        _add_config_flags(sw, exp.quick_config() if "--quick" in argv else exp.default_config())
    return parser


#: Options that take no value (the pre-scan for the recipe or experiment name skips them alone).
_FLAGS_WITHOUT_VALUE = (
    "--quick",
    "--all",
    "--in-process",
    "--resume",
    "--overwrite",
    "--accept-changes",
    "--no-progress",
    "-h",
    "--help",
)


def _command_and_name(argv: list[str]) -> tuple[str | None, str | None]:
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        return None, None
    command = words[0]
    rest = argv[argv.index(command) + 1 :]
    # the positional is the first word not consumed as an option's value
    i = 0
    while i < len(rest):
        a = rest[i]
        if a.startswith("-"):
            takes_value = a not in _FLAGS_WITHOUT_VALUE
            i += 2 if takes_value and "=" not in a else 1
            continue
        return command, a
    return command, None


def _recipes() -> int:
    from tlassoc import recipes

    times = recipes.measured_times()
    measured = times.get("recipes", {})
    print(f"{'recipe':12s} {'time here':>11s}  description")
    for name, recipe in recipes.RECIPES.items():
        t = measured.get(name)
        when = "not measured"
        if t:
            when = _duration(t["seconds"]) + ("" if t.get("how") == "full run" else "*")
        print(f"{name:12s} {when:>11s}  {recipe.description}")
    if times.get("machine"):
        print(
            f"\nTraining times measured on {times['machine']} by {times.get('how', '')}; "
            "* = measured seconds per step times the recipe's steps."
        )
    return 0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _experiments() -> int:
    from tlassoc import experiments

    times = experiments.measured_times()
    measured = times.get("experiments", {})
    print(f"{'experiment':22s} {'time here':>9s}  description")
    for name in experiments.names():
        t = measured.get(name)
        when = _duration(t["seconds"]) if t else "not measured"
        print(f"{name:22s} {when:>9s}  {experiments.get(name).description}")
    if times.get("machine"):
        total = times.get("total_seconds")
        print(
            f"\nDefault runs measured on {times['machine']} by {times['how']}"
            + (f"; all of them: {_duration(total)}" if total else "")
            + ". Alone, `tlassoc reproduce NAME` with several seeds adds about 10 s to start Ray."
        )
    return 0


def _train(args: argparse.Namespace) -> int:
    from tlassoc import recipes
    from tlassoc._io import folder_lock

    run = _apply(recipes.get(args.recipe), getattr(args, "settings", None) or [])
    out = _writable_dir(args.out)
    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite; expected at most one of them")
    with folder_lock(out, command=args.command_line), _one_line_warnings():
        _prepare_train_folder(args, run, out)
        return _train_locked(args, run, out)


def _prepare_train_folder(args: argparse.Namespace, run: Any, out: Path) -> None:
    """Refuse a folder holding something unless --resume/--overwrite; check a resume's settings;
    write run.json (only when it changes)."""
    from tlassoc._io import LOCK_FILE, LOCK_INFO_FILE, atomic_write_json
    from tlassoc.training.checkpoint import clear_run, resume_differences

    path = out / "run.json"
    entries = sorted(
        p.name
        for p in out.iterdir()
        if p.name not in (LOCK_FILE, LOCK_INFO_FILE) and not _temporary(p.name)
    )
    if args.overwrite:
        clear_run(out, names=("run.json",))
    elif entries and not args.resume:
        raise CLIError(
            f"--out {str(out)!r} is not empty ({', '.join(entries[:3])}"
            f"{', ...' if len(entries) > 3 else ''}); expected an empty folder: add --resume to "
            "continue the run in it, or --overwrite to replace it"
        )
    saved = _read_run_json(path) if args.resume else None
    if saved is not None:
        changes = resume_differences(saved.get("config", {}), run.to_dict())
        if changes and not args.accept_changes:
            raise CLIError(
                f"{path} was written with other settings: {'; '.join(changes)}; expected the "
                f"same settings to resume (e.g. --set {changes[0].split(' (now')[0]}), or "
                "--accept-changes to continue with the new ones"
            )
    record = {"recipe": args.recipe, "config": run.to_dict()}
    if saved != record:
        atomic_write_json(path, record)


def _temporary(name: str) -> bool:
    """A temporary file of an atomic write (removed by the next run that holds the lock)."""
    return name.startswith(".") and name.endswith(".tmp")


def _read_run_json(path: Path) -> dict[str, Any] | None:
    import json

    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CLIError(
            f"{path} is not valid JSON ({err}); expected the run.json of tlassoc train"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise CLIError(f"{path} has no 'config' object; expected the run.json of tlassoc train")
    return data


def _train_locked(args: argparse.Namespace, run: Any, out: Path) -> int:
    from tlassoc.data import make_task
    from tlassoc.memory.probes import probe_evaluator
    from tlassoc.model import AssocTransformer
    from tlassoc.training import train

    task = make_task(run.task, batch_size=run.train.batch_size, device=run.model.device)
    result = train(
        AssocTransformer(run.model),
        task,
        run.train,
        out_dir=out,
        resume=args.resume,
        accept_changes=args.accept_changes,
        progress=not args.no_progress,
        evaluators=[probe_evaluator(task)],
    )
    final = result.final_metrics
    print(
        f"trained {args.recipe} for {result.step} steps in {result.seconds:.1f} s: "
        f"in-context acc {final.get('acc_ge2', float('nan')):.3f}, "
        f"loss {final.get('loss', float('nan')):.3f}; written to {out}"
    )
    return 0


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Print warnings as one ``tlassoc: warning: ...`` line on stderr."""
    import warnings

    def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        print(f"tlassoc: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _measure(exp: Any, config: Any, out: Path, args: argparse.Namespace) -> Any:
    """The experiment's result: seeds in parallel on Ray unless ``--in-process``."""
    from tlassoc.sweep import measure

    return measure(
        exp,
        config,
        out,
        parallel=not args.in_process,
        address=args.address,
        progress=not args.no_progress,
    )


@contextlib.contextmanager
def _ray_for_all(args: argparse.Namespace) -> Iterator[None]:
    """One Ray instance for every experiment of ``--all`` (none with ``--in-process`` or
    without Ray: the experiments then run here, one after another)."""
    from tlassoc import sweep

    started = False
    if not args.in_process:
        try:
            started = sweep.start_ray(args.address)
        except sweep.RayUnavailableError:
            pass
    try:
        yield
    finally:
        if started:
            sweep.import_ray().shutdown()


def _reproduce_all(args: argparse.Namespace) -> int:
    from tlassoc import experiments
    from tlassoc.experiments.framework import write, write_index

    if args.experiment or getattr(args, "settings", None):
        raise CLIError(
            "--all runs every experiment with its own settings; expected no name or --set"
        )
    out = _writable_dir(args.out)
    entries = []
    with _one_line_warnings(), _ray_for_all(args):
        for name in experiments.names():
            exp = experiments.get(name)
            config = exp.quick_config() if args.quick else exp.default_config()
            print(f"== {name}", flush=True)
            try:
                result = _measure(exp, config, out / name, args)
            except Exception as err:  # noqa: BLE001 - a failing experiment must not stop the rest
                entries.append((name, exp.description, None, f"{type(err).__name__}: {err}"))
                print(f"{name}: failed: {type(err).__name__}: {err}", file=sys.stderr)
                continue
            write(exp, result, out / name)
            entries.append((name, exp.description, result, ""))
    index = write_index(out, entries)
    failed = [e[0] for e in entries if e[2] is None]
    print(f"index: {index}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _reproduce(args: argparse.Namespace) -> int:
    from tlassoc import experiments
    from tlassoc.experiments.framework import write

    if args.all:
        return _reproduce_all(args)
    exp = experiments.get(args.experiment or experiments.DEFAULT)
    config = exp.quick_config() if args.quick else exp.default_config()
    config = _apply(config, getattr(args, "settings", None) or [])
    out = _writable_dir(args.out)
    try:
        with _one_line_warnings():
            result = _measure(exp, config, out, args)
    except KeyboardInterrupt:
        if not (out / "trials").is_dir():
            raise
        print(
            f"tlassoc: reproduce interrupted; finished parts are kept in {out / 'trials'}; run "
            "the same command again to finish it",
            file=sys.stderr,
        )
        return 130
    write(exp, result, out)
    outcomes = exp.evaluate_claims(result)
    for o in outcomes:
        values = ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in o.values)
        print(f"{o.claim.name}: {'holds' if o.holds else 'does not hold'} ({values})")
    print(
        f"claims hold: {all(o.holds for o in outcomes)}; report: {out / 'report.md'} "
        f"({result.seconds:.0f} s)"
    )
    return 0


# --- sweeps (tlassoc.sweep; Ray is imported only when trials run) -------------------------------


def _sweep_parsers(sub: Any, argv: list[str]) -> argparse.ArgumentParser:
    """The ``sweep`` and ``sweep-report`` subcommands; returns the ``sweep`` parser."""
    s = sub.add_parser(
        "sweep",
        help="run an experiment over a grid of settings and seeds on Ray (see docs/sweeps.md)",
        usage="tlassoc sweep EXPERIMENT --grid PATH=V1,V2 [--grid ...] --out DIR [--quick] "
        "[--set PATH=VALUE ...] [--address ADDRESS] [--cpus-per-trial N] [--gpus-per-trial G] "
        "[--max-retries K] [--no-progress]",
    )
    s.add_argument("experiment", help="experiment name (see `tlassoc experiments`)")
    _run_options(s)
    s.add_argument("--quick", action="store_true", help="start from the experiment's small setting")
    s.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="PATH=V1,V2",
        help="values of one setting (repeatable: the trials are the cartesian product; "
        "seeds are always one trial each; use ';' between values holding commas)",
    )
    s.add_argument(
        "--address",
        help="join this Ray cluster ('auto' or 'ray://HOST:10001'); "
        "default: an embedded Ray on this machine's cores",
    )
    s.add_argument(
        "--cpus-per-trial",
        type=int,
        default=1,
        metavar="N",
        help="CPUs per trial, and its torch threads (default: 1)",
    )
    s.add_argument(
        "--gpus-per-trial",
        type=float,
        default=0,
        metavar="G",
        help="GPUs per trial; above 0 the model runs on cuda (default: 0)",
    )
    s.add_argument(
        "--max-retries",
        type=int,
        default=0,
        metavar="K",
        help="start a failing trial again up to K times (default: 0)",
    )
    s.set_defaults(command_line=" ".join(["tlassoc", *argv]))
    rep = sub.add_parser(
        "sweep-report", help="rebuild a sweep's tables and figures from its trials"
    )
    rep.add_argument("out", metavar="DIR", help="the sweep's output folder")
    return s


def _sweep(args: argparse.Namespace) -> int:
    from tlassoc import experiments, sweep

    exp = experiments.get(args.experiment)
    config = exp.quick_config() if args.quick else exp.default_config()
    config = _apply(config, getattr(args, "settings", None) or [])
    grid = sweep.parse_grid(exp.config_class, args.grid)
    out = _writable_dir(args.out)
    try:
        records = sweep.run_sweep(
            exp,
            config,
            grid,
            out,
            address=args.address,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            max_retries=args.max_retries,
            progress=not args.no_progress,
            command=args.command_line,
        )
    except sweep.RayUnavailableError as err:
        raise CLIError(str(err)) from None
    except KeyboardInterrupt:
        print(
            f"tlassoc: sweep interrupted; finished trials are kept in {out}; run the same "
            "command again to finish it",
            file=sys.stderr,
        )
        return 130
    failed = [r for r in records if r.status != "done"]
    for r in failed:
        print(f"trial {r.id} failed after {r.attempts} attempt(s): {r.error}", file=sys.stderr)
    print(
        f"{len(records) - len(failed)} of {len(records)} trials done; summary: "
        f"{out / 'summary.md'}; table: {out / 'trials.csv'}"
    )
    return 1 if failed else 0


def _sweep_report(args: argparse.Namespace) -> int:
    from tlassoc.sweep import build_report

    paths = build_report(args.out)
    print(f"rebuilt {len(paths)} files; summary: {paths['summary.md']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tlassoc`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
        handler = {
            "recipes": lambda a: _recipes(),
            "experiments": lambda a: _experiments(),
            "train": _train,
            "reproduce": _reproduce,
            "sweep": _sweep,
            "sweep-report": _sweep_report,
        }[args.command]
        return handler(args)
    except (CLIError, ValueError, OSError) as err:
        message = " ".join(str(err).split())
        print(f"tlassoc: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "tlassoc: interrupted (a checkpoint was written where an output folder was set)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
