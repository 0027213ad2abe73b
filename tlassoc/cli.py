"""The ``tlassoc`` command: ``train`` a recipe and ``reproduce`` the length-generalisation study.

Bad input (unknown recipe, unwritable folder, invalid numbers) prints one line on stderr and exits
with status 2, never a traceback.

Example:
    >>> main(["train", "no-such-recipe", "--out", "x"])  # doctest: +SKIP
    tlassoc: error: unknown recipe 'no-such-recipe'; expected one of [...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


class CLIError(Exception):
    """A user error reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be an integer >= 0")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive finite number")
    return value


def _writable_dir(path: str) -> Path:
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".tlassoc-write-test")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CLIError(f"output folder {path!r} is not writable: {err.strerror or err}") from None
    return folder


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tlassoc``."""
    from tlassoc.train import RECIPES

    parser = _Parser(prog="tlassoc", description="Induction heads as associative memories.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a recipe on the Tiny Shakespeare trigger task")
    t.add_argument("recipe", help=f"one of {', '.join(RECIPES)}")
    t.add_argument("--out", required=True, help="folder for metrics.jsonl and checkpoints")
    t.add_argument("--steps", type=_positive_int)
    t.add_argument("--lr", type=_positive_float)
    t.add_argument("--batch-size", type=_positive_int)
    t.add_argument("--seq-len", type=_positive_int, default=256)
    t.add_argument("--d-model", type=_positive_int)
    t.add_argument("--seed", type=_nonneg_int, default=0)
    t.add_argument("--log-every", type=_nonneg_int, default=50)
    t.add_argument("--checkpoint-every", type=_nonneg_int, default=100)
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--no-progress", action="store_true")

    r = sub.add_parser("reproduce", help="RPE vs APE length generalisation (report + figures)")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--quick", action="store_true", help="small setting (about a minute)")
    r.add_argument("--train-len", type=_positive_int)
    r.add_argument("--steps", type=_positive_int)
    r.add_argument("--batch-size", type=_positive_int)
    r.add_argument("--d-model", type=_positive_int)
    r.add_argument("--lr", type=_positive_float)
    r.add_argument("--seed", type=_nonneg_int)
    r.add_argument(
        "--relative-form",
        choices=("vector", "bias"),
        help="RPE model's relative term: frozen vector r_(t-s) (default) or learned bias",
    )
    r.add_argument(
        "--max-relative-distance",
        type=_positive_int,
        help="RPE distances; t-s is clipped at this minus 1 (default 64)",
    )
    r.add_argument("--no-progress", action="store_true")
    return parser


def _train(args: argparse.Namespace) -> int:
    from tlassoc import AssocTransformer
    from tlassoc.data import BigramModel, TriggerBigramTask
    from tlassoc.train import recipe, train

    overrides = {
        k: v
        for k, v in dict(steps=args.steps, lr=args.lr, batch_size=args.batch_size).items()
        if v is not None
    }
    model_cfg, train_cfg = recipe(args.recipe, **overrides)
    changes = {"seed": args.seed}
    if args.d_model is not None:
        changes["d_model"] = args.d_model
    if model_cfg.n_ctx < args.seq_len:
        changes["n_ctx"] = args.seq_len
    model_cfg = model_cfg.replace(**changes)
    out = _writable_dir(args.out)
    train_cfg = train_cfg.replace(
        seq_len=args.seq_len,
        seed=args.seed,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        out_dir=str(out),
        resume=args.resume,
        progress=not args.no_progress,
    )
    task = TriggerBigramTask(
        BigramModel.tiny_shakespeare(), seq_len=args.seq_len, batch_size=train_cfg.batch_size or 512
    )
    result = train(AssocTransformer(model_cfg), task, train_cfg)
    final = result.final_metrics
    print(
        f"trained {args.recipe} for {result.step} steps in {result.seconds:.1f} s: "
        f"in-context acc {final.get('acc_ge2', float('nan')):.3f}, "
        f"loss {final.get('loss', float('nan')):.3f}; written to {out}"
    )
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from tlassoc.experiments.length_generalization import LengthGenConfig, run

    overrides = {
        k: v
        for k, v in dict(
            train_len=args.train_len,
            steps=args.steps,
            batch_size=args.batch_size,
            d_model=args.d_model,
            lr=args.lr,
            seed=args.seed,
            relative_form=args.relative_form,
            max_relative_distance=args.max_relative_distance,
        ).items()
        if v is not None
    }
    if args.train_len is not None:
        overrides["eval_lens"] = (args.train_len, 2 * args.train_len, 4 * args.train_len)
    cfg = LengthGenConfig.quick_config(**overrides) if args.quick else LengthGenConfig(**overrides)
    out = _writable_dir(args.out)
    result = run(out, cfg, progress=not args.no_progress)
    r, a = result.models["rpe"], result.models["ape"]
    print(
        f"prev-token acc beyond T_train: RPE {r['prev_token_acc_beyond']:.3f}, "
        f"APE {a['prev_token_acc_beyond']:.3f}"
    )
    for name, m in (("RPE", r), ("APE", a)):
        s = m["segment"]
        print(f"{name} in-context acc early {s['early_acc_ge2']:.3f} late {s['late_acc_ge2']:.3f}")
    print(
        f"claims hold: {result.claims['all_hold']}; report: {out / 'report.md'} "
        f"({result.seconds:.0f} s)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tlassoc`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        if args.command == "train":
            return _train(args)
        return _reproduce(args)
    except CLIError as err:
        print(f"tlassoc: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"tlassoc: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"tlassoc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "tlassoc: interrupted (a checkpoint was written where an output folder was set)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
