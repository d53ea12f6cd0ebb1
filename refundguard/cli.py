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


# --------------------------------------------------------------------------- store-scores
def _add_store_scores(sub: Any) -> None:
    p = sub.add_parser(
        "store-scores",
        help="store experience scores (0.00-5.00) as of a date, their daily history, or one store explained",
        description=(
            "Compute the store experience score of every store with an event in the window "
            "[as_of - window_days, as_of). --history START END gives one row per store per day "
            "instead; --explain STORE_ID prints the merchant view of one store. Writes Parquet or "
            "CSV (by extension) with --out."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=_existing_dir, help="folder with orders/refunds/reviews[/service] (validated strictly)")
    src.add_argument("--olist", type=_existing_dir, help="Olist folder (read with the Olist adapter; bad rows set aside)")
    p.add_argument("--as-of", type=_date_arg, help="end of the window (excluded); a date means 00:00 in the config time zone")
    p.add_argument("--window-days", type=int, help="window length in days (default: the config's, 30)")
    p.add_argument("--config", type=Path, help="ScoreConfig as JSON (ScoreConfig.to_dict()); default the built-in bands")
    p.add_argument("--history", nargs=2, metavar=("START", "END"), type=_date_arg, help="daily rows for every day in [START, END]")
    p.add_argument("--explain", metavar="STORE_ID", help="print the merchant view of this store as of --as-of")
    p.add_argument("--out", type=Path, help="write the rows here (.parquet or .csv)")
    p.set_defaults(func=_run_store_scores)


def _run_store_scores(args: argparse.Namespace) -> int:
    import json

    from refundguard.config import INDICATORS, ScoreConfig
    from refundguard.scores import explain_store, store_score_history, store_scores
    from refundguard.tables import load_tables, summarize_rejects, validate, write_table

    if args.history is None and args.as_of is None:
        raise _UsageError("--as-of is required (or give --history START END)")
    if args.explain is not None and args.as_of is None:
        raise _UsageError("--explain needs --as-of")
    if args.config is not None:
        try:
            cfg = ScoreConfig.from_dict(json.loads(args.config.read_text()))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config {str(args.config)!r} is not valid JSON: {exc}", field="config") from exc
    else:
        cfg = ScoreConfig()
    if args.window_days is not None:
        cfg = cfg.replace(window_days=args.window_days)
    if args.olist is not None:
        from refundguard.datasets.olist import load_olist

        raw, report = load_olist(args.olist, return_report=True)
        import warnings

        from refundguard.errors import RejectedRowsWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RejectedRowsWarning)
            tables, rejects = validate(raw, mode="quarantine")
        print(
            f"olist: {report['olist_orders']:,d} orders -> {report['contract_orders']:,d} store orders "
            f"({report['multi_seller_orders']:,d} multi-seller split, {report['orders_without_items']:,d} without items skipped); "
            f"{report['contract_reviews']:,d} reviews; no refunds, no chats"
        )
        if len(rejects):
            for row in summarize_rejects(rejects).itertuples(index=False):
                print(f"  set aside: {row.table:8s} {row.column:14s} {row.rule:18s} {row.rows:>6,d}")
    else:
        tables, _ = validate(load_tables(args.data), mode="strict")

    if args.explain is not None:
        print(explain_store(tables, args.explain, args.as_of, cfg).to_text())
        return EXIT_OK
    if args.history is not None:
        df = store_score_history(tables, args.history[0], args.history[1], cfg)
        print(f"{len(df):,d} store-days, {df['store_id'].nunique():,d} stores, {df['as_of'].nunique():,d} days")
        last = df[df["as_of"] == df["as_of"].max()] if len(df) else df
    else:
        df = store_scores(tables, args.as_of, cfg)
        last = df
    scored = last["score"].notna()
    n = len(last)
    share = float((last.loc[scored, "score"] >= 4.80).mean()) if scored.any() else 0.0
    when = "" if args.history is None else " (last day)"
    print(
        f"stores{when}: {n:,d}  scored: {int(scored.sum()):,d}  share >= 4.80: {share:.1%}  "
        f"provisional: {int(last['provisional'].sum()):,d}  window: {cfg.window_days} days"
    )
    if n:
        na = [f"{ind} {1 - float(last[f'{ind}_assessed'].mean()):.0%}" for ind in INDICATORS]
        print("not assessed: " + ", ".join(na))
    if args.out is not None:
        write_table(df, args.out)
        print(f"written to {args.out}")
    return EXIT_OK


# --------------------------------------------------------------------------- registry
# Each entry adds one sub-command. Later commands (store-scores, train, evaluate,
# score, report, drift, whatif, demo) register here the same way.
COMMANDS: list[Callable[[Any], None]] = [
    _add_simulate,
    _add_validate,
    _add_store_scores,
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
