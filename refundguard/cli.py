"""The ``refundguard`` command line: argument parsing only, one function per command.

Every command takes paths, prints a short summary, exits 0 on success, 1 on bad
data, 2 on bad arguments, and prints one clear line on stderr without a
traceback (``--debug`` shows it). Long work shows a progress bar unless
``--quiet`` is given or stderr is not a terminal.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from refundguard.errors import ConfigError, RefundGuardError, RequestError

EXIT_OK = 0
EXIT_BAD_DATA = 1
EXIT_BAD_ARGS = 2


class _UsageError(Exception):
    """Bad command-line arguments detected after parsing (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # noqa: D102 - argparse hook
        self.print_usage(sys.stderr)
        print(f"refundguard: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_ARGS)


def _progress(args: argparse.Namespace) -> bool:
    """Whether to show progress bars: not with ``--quiet`` nor without a TTY."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _date_arg(value: str) -> str:
    import pandas as pd

    try:
        pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"not a date: {value!r}") from exc
    return value


def _existing_dir(value: str) -> Path:
    p = Path(value)
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"not a folder: {value!r}")
    return p


# --------------------------------------------------------------------------- simulate
def _add_simulate(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="write a seeded simulated marketplace (orders, refunds, reviews, service)",
        description=(
            "Simulate a marketplace with stores of varied quality, honest buyers, opportunists, "
            "serial refunders, rings sharing devices and addresses, and honest 'not received' "
            "claims. Writes one partitioned Parquet folder per table into --out, in chunks."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created; must be empty or absent)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same tables")
    p.add_argument("--buyers", type=int, default=20_000, help="number of buyers (default 20000)")
    p.add_argument("--stores", type=int, default=500, help="number of stores (default 500)")
    p.add_argument("--days", type=int, default=180, help="days simulated (default 180)")
    p.add_argument("--start", type=_date_arg, default="2024-06-01", help="first day, UTC (default 2024-06-01)")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from refundguard.simulate import SimulationConfig, simulate_to_parquet

    cfg = SimulationConfig(
        n_buyers=args.buyers, n_stores=args.stores, days=args.days, start=args.start, seed=args.seed
    )
    summary = simulate_to_parquet(cfg, args.out, progress=_progress(args))
    for table, n in summary.items():
        print(f"{table:8s} {n:>12,d} rows")
    print(f"written to {args.out}")
    return EXIT_OK


# --------------------------------------------------------------------------- validate
def _add_validate(sub: Any) -> None:
    p = sub.add_parser(
        "validate",
        help="check a data folder against the data contract",
        description=(
            "Check the tables in --data against the data contract. In strict mode the first "
            "broken rule stops with exit 1; in quarantine mode bad rows are set aside, counted "
            "per table and rule, optionally written to --rejects, and the exit code is 0 unless "
            "--fail-on-rejects is given."
        ),
    )
    p.add_argument("--data", required=True, type=_existing_dir, help="folder with orders/refunds/reviews[/service]")
    p.add_argument("--mode", choices=("strict", "quarantine"), default="strict", help="default strict")
    p.add_argument("--rejects", type=Path, help="write the rejects table here (.parquet or .csv; quarantine)")
    p.add_argument("--fail-on-rejects", action="store_true", help="exit 1 when any row is rejected")
    p.set_defaults(func=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
    from refundguard.tables import load_tables, summarize_rejects, validate, write_table

    if args.rejects is not None and args.mode != "quarantine":
        raise _UsageError("--rejects needs --mode quarantine")
    tables = load_tables(args.data)
    clean, rejects = validate(tables, mode=args.mode)
    print(f"{'table':8s} {'rows':>10s} {'clean':>10s} {'rejected':>10s}")
    for name, df in tables.items():
        n_in = len(df)
        n_clean = len(clean[name])
        print(f"{name:8s} {n_in:>10,d} {n_clean:>10,d} {n_in - n_clean:>10,d}")
    if len(rejects):
        print("rejects by table and rule:")
        for row in summarize_rejects(rejects).itertuples(index=False):
            print(f"  {row.table:8s} {row.column:16s} {row.rule:18s} {row.rows:>8,d}")
    if args.rejects is not None:
        write_table(rejects, args.rejects)
        print(f"rejects written to {args.rejects}")
    if args.fail_on_rejects and len(rejects):
        print(f"refundguard: {rejects['row_index'].groupby(rejects['table']).nunique().sum()} rows rejected", file=sys.stderr)
        return EXIT_BAD_DATA
    return EXIT_OK


# --------------------------------------------------------------------------- registry
# Each entry adds one sub-command. Later commands (store-scores, train, evaluate,
# score, report, drift, whatif, demo) register here the same way.
COMMANDS: list[Callable[[Any], None]] = [
    _add_simulate,
    _add_validate,
]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``refundguard`` argument parser with every sub-command."""
    from refundguard._version import __version__

    parser = _Parser(prog="refundguard", description="Refund-only abuse detection: scores, model, decisions.")
    parser.add_argument("--version", action="version", version=f"refundguard {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except _UsageError as exc:
        print(f"refundguard: error: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    except (ConfigError, RequestError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"refundguard: error: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    except RefundGuardError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"refundguard: error: {exc}", file=sys.stderr)
        return EXIT_BAD_DATA
    except (OSError, ValueError) as exc:  # unreadable files, bad formats reported by libraries
        if args.debug:
            traceback.print_exc()
        print(f"refundguard: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BAD_DATA


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
