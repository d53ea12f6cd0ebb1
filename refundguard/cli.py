"""The ``refundguard`` command line: argument parsing only, one function per command.

Each command parses its arguments, calls the library, and prints. Every command
takes paths, prints a short summary, exits 0 on success, 1 on bad data, 2 on bad
arguments, and prints one clear line on stderr without a traceback (``--debug``
shows it). Long work shows a progress bar unless ``--quiet`` is given or stderr is
not a terminal. ``--debug`` and ``--quiet`` go before or after the command name.

Arguments are checked before any work: dates are ISO 8601 (:func:`_date_arg`),
periods and slice ends increase (:func:`_ordered_dates`), counts have their minimum
(:func:`_int_at_least`), and every output path is writable, its folders created
(:func:`_output_option`). A command adds such checks with :func:`_add_check`;
:func:`main` runs them before the command. Warnings print as one line,
``refundguard: warning: <message>``.

Numbers are printed at a precision a person reads: probabilities and metrics with
4 decimals (thresholds with 4 significant digits), counts with thousands
separators, shares as percentages, amounts with 2 decimals.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from refundguard._time import TimeValueError, instant_ns
from refundguard.config import DEFAULT_GATE, PolicyConfig, ScoreConfig
from refundguard.datasets import DATASET_SOURCES, convert_dataset
from refundguard.demo import DEMO_BUYERS, DEMO_DAYS, DEMO_SEED, DEMO_STORES, run_demo
from refundguard.errors import (
    ConfigError,
    RefundGuardError,
    RequestError,
)
from refundguard.batch import BACKENDS, DEFAULT_CHUNK_DAYS
from refundguard.guard import SCORED_FORMATS, RefundGuard
from refundguard.monitoring import FIGURES, drift, whatif, write_report
from refundguard.monitoring.drift import PSI_MODERATE, PSI_SIGNIFICANT
from refundguard.policy import PolicyTimeline
from refundguard.registry import ModelRegistry
from refundguard.scores import (
    calibrate_bands,
    excellent_share,
    explain_store,
    store_score_history,
    store_scores,
    summarize_store_scores,
)
from refundguard.simulate import SimulationConfig, simulate_to_parquet
from refundguard.tables import load_tables, summarize_rejects, validate, write_table
from refundguard.training import DEFAULT_GAP_DAYS, evaluate, promote_if_better, train

EXIT_OK = 0
EXIT_BAD_DATA = 1
EXIT_BAD_ARGS = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader closed the pipe


class _UsageError(Exception):
    """Bad command-line arguments detected after parsing (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # noqa: D102 - argparse hook
        self.print_usage(sys.stderr)
        print(f"refundguard: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_ARGS)


def _add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """``--debug`` and ``--quiet``, on the top-level parser and on every sub-command.

    The sub-commands use ``default=argparse.SUPPRESS`` so that a flag given before
    the command name is not reset by the sub-command's default.
    """
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", default=default, help="no progress bars")


def _progress(args: argparse.Namespace) -> bool:
    """Whether to show progress bars: not with ``--quiet`` nor without a TTY."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _gated_policy() -> PolicyConfig:
    """The default policy's last version: the one with the store gate (for help texts)."""
    return PolicyTimeline.default().versions[-1]


def _threshold(value: float | None) -> str:
    """A decision threshold at 4 significant digits (``disabled`` when unset)."""
    return "disabled" if value is None else f"{value:.4g}"


def _date_arg(value: str) -> str:
    """A date or instant in ISO 8601, the library's one rule (``now``, ``today``, ``01/06/2024``: refused)."""
    try:
        ns = instant_ns(value)
    except TimeValueError:
        ns = None
    if ns is None:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or timestamp: {value!r} (e.g. 2024-07-01)")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {n}")
        return n

    parse.__name__ = f"integer >= {minimum}"
    return parse


# --------------------------------------------------------------------------- checks before any work
Check = Callable[[argparse.Namespace], None]


def _add_check(p: argparse.ArgumentParser, check: Check) -> None:
    """Run ``check(args)`` after parsing and before the command's work (it raises ``_UsageError``: exit 2)."""
    p.set_defaults(_checks=(*(p.get_default("_checks") or ()), check))


def _run_checks(args: argparse.Namespace) -> None:
    for check in getattr(args, "_checks", ()):
        check(args)


def _ordered_dates(*options: tuple[str, str]) -> Check:
    """A check: the given date options (``(dest, flag)`` pairs, those present) strictly increase."""

    def check(args: argparse.Namespace) -> None:
        given = [(flag, getattr(args, dest)) for dest, flag in options if getattr(args, dest, None) is not None]
        for (flag1, v1), (flag2, v2) in zip(given, given[1:]):
            if instant_ns(v2) <= instant_ns(v1):
                raise _UsageError(f"{flag2} {v2} must be after {flag1} {v1}: the period [{v1}, {v2}) is empty")

    return check


def _check_output(path: Path, option: str, kind: str) -> None:
    """Before any work: ``path`` can be written (its folders are created).

    ``kind`` is ``"file"`` (replaced by a rename: it must not be a folder) or ``"folder"``
    (must not be a file). A probe file is created and removed in the folder that will
    receive the output, so a read-only or full destination fails here, not after the work.
    """
    if kind == "file" and path.is_dir():
        raise _UsageError(f"{option} {path} is a folder; give a file name")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise _UsageError(f"{option} {path} is a file; give a folder")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _UsageError(f"{option}: cannot create the folder {parent}: {exc.strerror or exc}") from None
    places = [parent] + ([path] if kind == "folder" and path.is_dir() else [])
    for place in places:
        try:
            fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=place)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise _UsageError(f"{option}: cannot write in {place}: {exc.strerror or exc}") from None


def _output_option(p: argparse.ArgumentParser, *flags: str, kind: str = "file", **kw: Any) -> None:
    """An output path option, checked writable (folders created) before the command's work."""
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    action = p.add_argument(*flags, type=Path, **kw)

    def check(args: argparse.Namespace) -> None:
        value = getattr(args, action.dest, None)
        if value is not None:
            _check_output(value, flags[0], kind)

    _add_check(p, check)


def _jobs_arg(value: str) -> int:
    """``--jobs``: a positive number of workers, or -1 for every core (joblib's rule)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if n == 0 or n < -1:
        raise argparse.ArgumentTypeError(f"must be -1 (every core) or an integer >= 1; got {n}")
    return n


def _existing_file(value: str) -> Path:
    p = Path(value)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"not a file: {value!r}")
    return p


def _existing_dir(value: str) -> Path:
    p = Path(value)
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"not a folder: {value!r}")
    return p


def _data_option(p: argparse.ArgumentParser, **kw: Any) -> None:
    """``--data DIR``: a folder with the contract's tables."""
    kw.setdefault("required", True)
    kw.setdefault("help", "folder with orders/refunds/reviews[/service]")
    p.add_argument("--data", type=_existing_dir, **kw)


def _model_option(p: argparse.ArgumentParser) -> None:
    """``--model DIR``: a model folder."""
    p.add_argument("--model", required=True, type=_existing_dir, help="model folder")


def _period_options(p: argparse.ArgumentParser) -> None:
    """``--from D --to D``: the half-open period on ``requested_at`` (``--to`` after ``--from``: exit 2 otherwise)."""
    p.add_argument("--from", dest="start", type=_date_arg, help="first requested_at (inclusive)")
    p.add_argument("--to", dest="end", type=_date_arg, help="last requested_at (exclusive); after --from")
    _add_check(p, _ordered_dates(("start", "--from"), ("end", "--to")))


def _load_clean(folder: Path) -> dict[str, Any]:
    """Load a data folder and validate it strictly (bad data: SchemaError, exit 1)."""
    clean, _ = validate(load_tables(folder), mode="strict")
    return clean


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
    d = SimulationConfig()
    _output_option(p, "--out", kind="folder", required=True, help="output folder (created; must be empty or absent)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed}); same seed, same tables")
    p.add_argument("--buyers", type=int, default=d.n_buyers, help=f"number of buyers (default {d.n_buyers})")
    p.add_argument("--stores", type=int, default=d.n_stores, help=f"number of stores (default {d.n_stores})")
    p.add_argument("--days", type=int, default=d.days, help=f"days simulated (default {d.days})")
    start = d.start_ts.date().isoformat()
    p.add_argument("--start", type=_date_arg, default=start, help=f"first day, UTC (default {start})")
    p.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
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
    _data_option(p)
    p.add_argument("--mode", choices=("strict", "quarantine"), default="strict", help="default strict")
    _output_option(p, "--rejects", help="write the rejects table here (.parquet or .csv; quarantine)")
    p.add_argument("--fail-on-rejects", action="store_true", help="exit 1 when any row is rejected")
    p.set_defaults(func=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
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
        n_rejected = int(rejects["row_index"].groupby(rejects["table"]).nunique().sum())
        print(f"refundguard: {n_rejected:,d} rows rejected", file=sys.stderr)
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
    _data_option(src, required=False, help="folder with orders/refunds/reviews[/service] (validated strictly)")
    src.add_argument("--olist", type=_existing_dir, help="Olist folder (read with the Olist adapter; bad rows set aside)")
    p.add_argument("--as-of", type=_date_arg, help="end of the window (excluded); a date means 00:00 in the config time zone")
    p.add_argument("--window-days", type=_int_at_least(1),
                   help=f"window length in days (default: the config's, {ScoreConfig().window_days})")
    p.add_argument("--config", type=Path, help="ScoreConfig as JSON (ScoreConfig.to_dict()); default the built-in bands")
    p.add_argument("--history", nargs=2, metavar=("START", "END"), type=_date_arg,
                   help="daily rows for every day in [START, END] (END on or after START)")
    _add_check(p, _history_days)
    p.add_argument("--explain", metavar="STORE_ID", help="print the merchant view of this store as of --as-of")
    _output_option(p, "--out", help="write the rows here (.parquet or .csv)")
    p.set_defaults(func=_run_store_scores)


def _history_days(args: argparse.Namespace) -> None:
    """``--history START END``: END on or after START (both days are included)."""
    if args.history is not None and instant_ns(args.history[1]) < instant_ns(args.history[0]):
        raise _UsageError(f"--history END {args.history[1]} must be on or after START {args.history[0]}")


def _run_store_scores(args: argparse.Namespace) -> int:
    if args.history is None and args.as_of is None:
        raise _UsageError("--as-of is required (or give --history START END)")
    if args.explain is not None and args.as_of is None:
        raise _UsageError("--explain needs --as-of")
    cfg = _score_config(args.config)
    if args.window_days is not None:
        cfg = cfg.replace(window_days=args.window_days)
    tables = _load_olist(args.olist) if args.olist is not None else _load_clean(args.data)

    if args.explain is not None:
        print(explain_store(tables, args.explain, args.as_of, cfg).to_text())
        return EXIT_OK
    if args.history is not None:
        df = store_score_history(tables, args.history[0], args.history[1], cfg)
    else:
        df = store_scores(tables, args.as_of, cfg)
    print(summarize_store_scores(df, cfg, history=args.history is not None).to_text())
    if args.out is not None:
        write_table(df, args.out)
        print(f"written to {args.out}")
    return EXIT_OK


def _score_config(path: Path | None) -> ScoreConfig:
    """The ScoreConfig in the JSON file ``path`` (``ScoreConfig.to_json``), or the default."""
    return ScoreConfig() if path is None else ScoreConfig.from_json(path)


def _load_olist(folder: Path) -> dict[str, Any]:
    """Read an Olist folder into the contract's tables (bad rows set aside) and print what was read."""
    from refundguard.datasets.olist import convert_olist

    result = convert_olist(folder)
    report, rejects = result.report, result.rejects
    print(
        f"olist: {report['olist_orders']:,d} orders -> {report['contract_orders']:,d} store orders "
        f"({report['multi_seller_orders']:,d} multi-seller split, {report['orders_without_items']:,d} without items skipped); "
        f"{report['contract_reviews']:,d} reviews; no refunds, no chats"
    )
    for row in summarize_rejects(rejects).itertuples(index=False) if len(rejects) else ():
        print(f"  set aside: {row.table:8s} {row.column:14s} {row.rule:18s} {row.rows:>6,d}")
    return result.tables


# --------------------------------------------------------------------------- convert
def _existing_path(value: str) -> Path:
    p = Path(value)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {value!r}")
    return p


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a public data set (Olist, UCI Online Retail) to contract tables, rows set aside with a reason",
        description=(
            "Map a public data set to the data contract and validate it (quarantine): the clean tables are "
            "written to --out as orders/refunds/reviews/service.parquet, and every row that could not be mapped "
            "or broke a rule, with its reason, to --rejects. The mapping of each source is documented in "
            "refundguard.datasets (olist.py, uci.py)."
        ),
    )
    p.add_argument("--source", required=True, choices=sorted(DATASET_SOURCES), help="the data set")
    p.add_argument("--in", dest="source_path", required=True, type=_existing_path,
                   help="the data set: the Olist folder, or UCI's online_retail.parquet (or its folder)")
    _output_option(p, "--out", kind="folder", required=True, help="new folder for the contract tables (absent or empty)")
    _output_option(p, "--rejects", help="write every row set aside, with its reason, here (.parquet or .csv)")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    result = convert_dataset(args.source, args.source_path, args.out, rejects=args.rejects)
    print(result.to_text())
    print(f"written to {args.out}" + (f"; rows set aside written to {args.rejects}" if args.rejects else ""))
    return EXIT_OK


# --------------------------------------------------------------------------- calibrate-bands
def _add_calibrate_bands(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate-bands",
        help="fit the store-score bands to this marketplace (per-category percentiles of a reference period)",
        description=(
            "Derive the 0..5-point band anchors of every indicator from the stores of the reference period "
            "[--from, --to] (per category with enough stores), optionally tuned so that a target share of "
            "established store-days reaches the store gate. Writes a ScoreConfig as JSON for "
            "'store-scores --config' and 'train --score-config'."
        ),
    )
    _data_option(p)
    p.add_argument("--from", dest="start", required=True, type=_date_arg, help="first day of the reference period")
    p.add_argument("--to", dest="end", required=True, type=_date_arg, help="last day of the reference period")
    _add_check(p, _ordered_dates(("start", "--from"), ("end", "--to")))
    _output_option(p, "--out", required=True, help="ScoreConfig JSON file to write")
    p.add_argument("--config", type=Path, help="start from this ScoreConfig JSON (default the built-in one)")
    p.add_argument("--target-excellent", type=float, metavar="SHARE",
                   help=f"share of established store-days at or above {DEFAULT_GATE:.2f} to aim for (e.g. 0.05)")
    p.set_defaults(func=_run_calibrate_bands)


def _run_calibrate_bands(args: argparse.Namespace) -> int:
    tables = _load_clean(args.data)
    base = _score_config(args.config)
    before = excellent_share(tables, args.start, args.end, base)
    cfg = calibrate_bands(tables, args.start, args.end, base, target_excellent=args.target_excellent)
    after = excellent_share(tables, args.start, args.end, cfg)
    cfg.to_json(args.out)
    per_category = sorted({c for ind in cfg.bands.values() for c in ind if c != "*"})
    print(f"bands from {args.start} to {args.end}: {len(per_category):,d} categories with their own bands"
          + (f" ({', '.join(per_category)})" if per_category else ""))
    print(f"established store-days at {after.gate:.2f} or more: {before.share:.1%} with the starting bands -> "
          f"{after.share:.1%} calibrated ({after.excellent:,d} of {after.established:,d})"
          + ("" if args.target_excellent is None else f"; target {args.target_excellent:.1%}"))
    print(f"config {cfg.config_hash()[:12]} written to {args.out}")
    return EXIT_OK


# --------------------------------------------------------------------------- train
def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train, calibrate and save an abuse model on a time split",
        description=(
            "Train on refunds requested before --train-end minus the label-maturity gap (labels known by then), "
            "calibrate and set thresholds on [--train-end, --valid-end), report metrics on [--valid-end, "
            "--test-end). Writes the model folder --out (model.txt, meta.json, README.md, MANIFEST). With "
            "--registry, the model is also registered there and becomes the current version only when it has a "
            "higher PR-AUC on the test slice than the current one; both figures are printed and logged, and "
            "'refundguard rollback' serves the replaced version again."
        ),
    )
    _data_option(p)
    p.add_argument("--train-end", required=True, type=_date_arg, help="end of the training slice")
    p.add_argument("--valid-end", required=True, type=_date_arg, help="end of the validation slice")
    p.add_argument("--test-end", type=_date_arg, help="end of the test slice (needed for --registry)")
    p.add_argument("--gap-days", type=_int_at_least(0), default=DEFAULT_GAP_DAYS,
                   help=f"label maturity gap before --train-end (default {DEFAULT_GAP_DAYS})")
    _add_check(p, _ordered_dates(("train_end", "--train-end"), ("valid_end", "--valid-end"), ("test_end", "--test-end")))
    _output_option(p, "--out", kind="folder", required=True, help="model folder to write (replaced atomically)")
    _output_option(p, "--registry", "--champion", kind="folder",
                   help="model registry folder (created when absent): the model becomes current only if better")
    p.add_argument("--score-config", type=Path,
                   help="ScoreConfig JSON (from calibrate-bands) for the store scores; stored in the model")
    p.add_argument("--tune", type=_int_at_least(0), default=0, metavar="N",
                   help="try N parameter sets, chosen on the validation slice (default 0: train once)")
    p.add_argument("--gated-labels", choices=("all", "audit"), default="all",
                   help="'audit': requests behind the store gate are labelled only through the audit sample; "
                        "use those, weighted 1/audit_rate (default 'all': every labelled request)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    if args.registry is not None and args.test_end is None:
        raise _UsageError("--registry needs --test-end (the comparison runs on the test slice)")
    score_config = _score_config(args.score_config)
    tables = _load_clean(args.data)
    command = "refundguard " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("refundguard") else None
    model = train(
        tables, args.train_end, args.valid_end, args.test_end, gap_days=args.gap_days,
        gated_labels=args.gated_labels, validate_tables=False, command=command, progress=_progress(args),
        score_config=score_config, tune=args.tune,
    )
    saved = model.save(args.out)
    w = model.meta["windows"]["rows"]
    print(f"trained on {w['train']:,} rows (+{w['early_stopping']:,} early stopping), "
          f"validated on {w['valid']:,}" + (f", tested on {w['test']:,}" if w.get("test") is not None else ""))
    for name, ev in model.evaluations.items():
        o = ev.overall
        print(f"{name:5s} PR-AUC {o['pr_auc']:.4f}  ROC-AUC {o['roc_auc']:.4f}  "
              f"recall@{model.thresholds.intercept_precision:.2f} {o['recall_at_precision']:.4f}  ECE {o['ece']:.4f}")
    print(f"thresholds: intercept {_threshold(model.thresholds.intercept)}, "
          f"review {_threshold(model.thresholds.review)}")
    print(f"model {saved.model_version} written to {args.out}")
    tuning = model.meta.get("tuning")
    if tuning:
        chosen = tuning["tried"][tuning["chosen"]]
        print(f"tuning: {tuning['candidates']} parameter sets, chosen #{tuning['chosen']} "
              f"(validation PR-AUC {chosen['valid_pr_auc']:.4f})")
    if args.registry is not None:
        result = promote_if_better(model, tables, args.registry, validate_tables=False)
        champ = "none" if result.champion is None else f"{result.champion:.4f}"
        print(f"test {result.metric}: challenger {result.challenger:.4f}, current {champ} -> "
              + (f"promoted: {result.version} is current" if result.promoted
                 else f"current {result.previous} kept ({result.version} registered)")
              + f" in {args.registry}")
    return EXIT_OK


# --------------------------------------------------------------------------- rollback
def _add_rollback(sub: Any) -> None:
    p = sub.add_parser(
        "rollback",
        help="serve again the model version that the current one replaced in a registry",
        description="Move a model registry's current pointer back to the version the current one replaced "
                    "when it was promoted (atomically), log it, and print the registry's versions.",
    )
    p.add_argument("--registry", required=True, type=_existing_dir, help="model registry folder")
    p.set_defaults(func=_run_rollback)


def _run_rollback(args: argparse.Namespace) -> int:
    registry = ModelRegistry(args.registry)
    replaced = registry.current()
    version = registry.rollback()
    print(f"rolled back: {version} is current again (was {replaced})")
    for v in registry.versions():
        print(f"  {'*' if v == version else ' '} {v}")
    return EXIT_OK


# --------------------------------------------------------------------------- evaluate
def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a model on labelled refunds (PR-AUC, recall at precision, ECE, by band and category)",
        description="Score the labelled refunds requested in [--from, --to) point in time and compare with the labels.",
    )
    _data_option(p)
    _model_option(p)
    _period_options(p)
    _output_option(p, "--out", help="write the metrics as JSON here (folders created)")
    p.set_defaults(func=_run_evaluate)


#: How ``evaluate`` prints each overall figure: probabilities and metrics with 4 decimals, money with 2.
_EVALUATE_FIGURES: tuple[tuple[str, str], ...] = (
    ("pr_auc", "{:.4f}"),
    ("roc_auc", "{:.4f}"),
    ("recall_at_precision", "{:.4f}"),
    ("precision_at_k", "{:.4f}"),
    ("ece", "{:.4f}"),
    ("brier", "{:.4f}"),
    ("intercepted_amount", "{:,.2f}"),
)
_SLICE_COLUMNS: dict[str, Callable[[Any], str]] = {
    "n": "{:,}".format,
    "n_positive": "{:,}".format,
    "pr_auc": "{:.4f}".format,
    "recall_at_precision": "{:.4f}".format,
    "ece": "{:.4f}".format,
}


def _frame_text(frame: pd.DataFrame, formatters: dict[str, Callable[[Any], str]]) -> str:
    """These columns of ``frame`` as text, each cell formatted, two spaces between columns."""
    width = {c: max([len(c), *(len(f(v)) for v in frame[c])]) + 1 for c, f in formatters.items()}
    return frame[list(formatters)].to_string(formatters=formatters, col_space=width)


def _run_evaluate(args: argparse.Namespace) -> int:
    tables = _load_clean(args.data)
    result = evaluate(args.model, tables, args.start, args.end, validate_tables=False)
    o = result.overall
    print(f"{o['n']:,} labelled refunds, {o['n_positive']:,} abusive ({o['positive_rate']:.2%})")
    for key, fmt in _EVALUATE_FIGURES:
        value = o.get(key)
        print(f"  {key:22s} {fmt.format(value) if isinstance(value, float) else value}")
    for title, frame in (("by store-score band:", result.by_band), ("by category:", result.by_category)):
        if frame is not None:
            print(title)
            print(_frame_text(frame, _SLICE_COLUMNS))
    if args.out is not None:
        result.to_json(args.out)
        print(f"metrics written to {args.out}")
    return EXIT_OK


# --------------------------------------------------------------------------- score
def _add_score(sub: Any) -> None:
    p = sub.add_parser(
        "score",
        help="decide every refund in a period with a model and the dated policy (batch, streamed, all cores)",
        description=(
            "Decide the refunds requested in [--from, --to): merchant_handles (store gate), approve, review or "
            "intercept, with the probability, reasons, model and policy versions; sorted by requested_at, "
            "refund_id. The input is validated in quarantine mode: rejected rows are never decided, they go to "
            "--rejects, and the summary prints in = scored + rejected. Work runs in time slices of --chunk-days, "
            "--jobs at once (threads of one process, or --backend processes); the output (Parquet or CSV by the "
            "extension of --out) is the same for any --jobs, --backend and --chunk-days, written under a "
            "temporary name and renamed at the end."
        ),
    )
    _data_option(p)
    _model_option(p)
    _output_option(p, "--out", required=True, help="output file (.parquet or .csv)")
    _period_options(p)
    p.add_argument("--store-scores", type=_existing_file, metavar="FILE",
                   help="published daily store scores (as store-scores --history writes) to gate on instead of "
                        "recomputing them; a (store, day) absent from the file is a missing score")
    _output_option(p, "--rejects", metavar="FILE", help="write the rejected input rows here (.parquet or .csv)")
    p.add_argument("--jobs", type=_jobs_arg, default=1, help="slices at once (-1: every core; default 1)")
    p.add_argument("--backend", choices=BACKENDS, default="threads",
                   help="with --jobs > 1: threads of this process sharing the index (default), or joblib worker "
                        "processes memory-mapping a copy (each starts Python and parses the model: for many cores)")
    p.add_argument("--chunk-days", type=_int_at_least(1), default=DEFAULT_CHUNK_DAYS,
                   help=f"days per time slice (default {DEFAULT_CHUNK_DAYS})")
    p.add_argument("--always-score", action="store_true", help="score gated requests too (monitoring)")
    p.add_argument("--compiled", choices=("auto", "yes", "no"), default="auto",
                   help="model stage on the forests compiled by lleaves (the fast extra; LightGBM's results to the "
                        "last bit): yes compiles the model once (~50 s for the default model) into the user cache "
                        "folder; auto (default) uses them only when already cached (REFUNDGUARD_COMPILED=0|1 stands "
                        "for no|yes); no: LightGBM")
    p.set_defaults(func=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    if args.out.suffix not in SCORED_FORMATS:
        raise _UsageError(f"--out must end in {' or '.join(SCORED_FORMATS)}; got {args.out.name!r}")
    if args.rejects is not None and args.rejects.suffix not in (".parquet", ".csv"):
        raise _UsageError(f"--rejects must end in .parquet or .csv; got {args.rejects.name!r}")
    guard = RefundGuard.load(args.model)
    result = guard.score_history(
        args.data, args.start, args.end, out=args.out, rejects=args.rejects, store_scores=args.store_scores,
        jobs=args.jobs, chunk_days=args.chunk_days, always_score=args.always_score, progress=_progress(args),
        backend=args.backend, compiled={"auto": None, "yes": True, "no": False}[args.compiled],
    )
    print(result.to_text())
    print(f"written to {args.out}")
    if args.rejects is not None:
        print(f"rejects written to {args.rejects}")
    return EXIT_OK


# --------------------------------------------------------------------------- report / drift / whatif
def _add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="write the analyst report of a period: one HTML page and its PNG figures (needs the report extra)",
        description=(
            "Score every refund requested in [--from, --to) (gated ones too), measure the model against the labels "
            "and the policy's decisions, and write --out/index.html with its figures: "
            + "; ".join(f"{name} ({what.lower()})" for name, what in FIGURES.items())
            + ". The page opens with a summary and loads nothing from the network. --out is created, or replaced "
            "when it holds an earlier report."
        ),
    )
    _data_option(p)
    _model_option(p)
    p.add_argument("--out", required=True, type=Path, help="report folder (index.html and PNG files)")
    _period_options(p)
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    report = write_report(args.model, _load_clean(args.data), args.out, args.start, args.end,
                          validate_tables=False, progress=_progress(args))
    print(report.to_text())
    return EXIT_OK


def _add_drift(sub: Any) -> None:
    p = sub.add_parser(
        "drift",
        help="PSI of each feature, the score and the gated share of a period against the model's training bins",
        description=(
            "Compare the refunds requested in [--from, --to) with the training bins stored in the model's "
            "meta.json: the population stability index per feature, for the calibrated score and for the share "
            f"of requests behind the store gate; flagged moderate from {PSI_MODERATE:g} and significant from "
            f"{PSI_SIGNIFICANT:g}. With --out, writes drift.csv and drift.png (the plot needs the report extra)."
        ),
    )
    _model_option(p)
    _data_option(p)
    _period_options(p)
    p.add_argument("--out", type=Path, help="folder for drift.csv and drift.png (created)")
    p.set_defaults(func=_run_drift)


def _run_drift(args: argparse.Namespace) -> int:
    report = drift(args.model, _load_clean(args.data), args.start, args.end, validate_tables=False,
                   progress=_progress(args))
    print(report.to_text())
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        written = [report.to_csv(args.out / "drift.csv"), report.plot(args.out / "drift.png")]
        print("written: " + ", ".join(str(w) for w in written))
    return EXIT_OK


def _gate_arg(value: str) -> float | None:
    if value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a store gate (a number, or 'none'): {value!r}") from exc


def _add_whatif(sub: Any) -> None:
    gate = _gated_policy().gate
    p = sub.add_parser(
        "whatif",
        help="replay a period under other store gates, intercept precisions and review capacity",
        description=(
            "Score every refund requested in [--from, --to) once, then decide it again under each combination of "
            "--gate and --intercept-precision with the dated policy (the gate replaces the gate of every gated "
            "policy version; versions without a gate keep none). Per variant: share left to merchants, intercepts "
            "and reviews per day (beyond --review-capacity the lowest-risk reviews of the day are approved), "
            "abusive amount left to merchants (labels behind the gate come from the audit sample; with its "
            "interval), abusive amount stopped, honest requests intercepted and their amount. With --out, writes "
            "whatif.csv and whatif.png (the plot needs the report extra)."
        ),
    )
    _data_option(p)
    _model_option(p)
    _period_options(p)
    p.add_argument("--gate", nargs="+", type=_gate_arg, metavar="G",
                   help=f"store gates to try, or 'none' (default: the policy's, {gate:.2f})")
    p.add_argument("--intercept-precision", nargs="+", type=float, metavar="P",
                   help="target intercept precisions to try, turned into thresholds with the model's validation "
                        "curve (default: the model's threshold)")
    p.add_argument("--review-capacity", type=int, metavar="N_PER_DAY", help="reviews per day (default unlimited)")
    p.add_argument("--censor", choices=("policy", "none"), default="policy",
                   help="'policy' (default): labels behind the gate only from the audit sample, as in production; "
                        "'none': every label in the data")
    p.add_argument("--out", type=Path, help="folder for whatif.csv and whatif.png (created)")
    p.set_defaults(func=_run_whatif)


def _run_whatif(args: argparse.Namespace) -> int:
    result = whatif(args.model, _load_clean(args.data), args.start, args.end, gates=args.gate,
                    intercept_precisions=args.intercept_precision, review_capacity=args.review_capacity,
                    censor=args.censor, validate_tables=False, progress=_progress(args))
    print(result.to_text())
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        written = [result.to_csv(args.out / "whatif.csv"), result.plot(args.out / "whatif.png")]
        print("written: " + ", ".join(str(w) for w in written))
    return EXIT_OK


# --------------------------------------------------------------------------- demo
def _add_demo(sub: Any) -> None:
    gated = _gated_policy()
    start = SimulationConfig().start_ts.date()
    p = sub.add_parser(
        "demo",
        help="end to end on the bundled default model: simulate, validate, store scores, decide, evaluate, report",
        description=(
            "Simulate a small marketplace (a seed the default model never saw), validate it, compute store "
            "experience scores, decide every refund with the bundled default model and the dated policy "
            f"(the {gated.gate:.2f} store gate from {gated.effective_from}), compare with the simulated labels, "
            "decide one request online, and write the analyst report (with the report extra) to --out/report. "
            "Everything is written under --out."
        ),
    )
    _output_option(p, "--out", kind="folder", default=Path("refundguard-demo"), help="output folder (default ./refundguard-demo)")
    p.add_argument("--buyers", type=int, default=DEMO_BUYERS, help=f"buyers (default {DEMO_BUYERS})")
    p.add_argument("--stores", type=int, default=DEMO_STORES, help=f"stores (default {DEMO_STORES})")
    p.add_argument("--days", type=int, default=DEMO_DAYS, help=f"days from {start} (default {DEMO_DAYS})")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help=f"simulation seed (default {DEMO_SEED})")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    result = run_demo(args.out, buyers=args.buyers, stores=args.stores, days=args.days, seed=args.seed,
                      progress=_progress(args))
    print(result.to_text())
    return EXIT_OK


# --------------------------------------------------------------------------- registry
# Each entry adds one sub-command.
COMMANDS: list[Callable[[Any], None]] = [
    _add_simulate,
    _add_convert,
    _add_validate,
    _add_store_scores,
    _add_calibrate_bands,
    _add_train,
    _add_rollback,
    _add_evaluate,
    _add_score,
    _add_report,
    _add_drift,
    _add_whatif,
    _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``refundguard`` argument parser with every sub-command."""
    from refundguard._version import __version__

    parser = _Parser(prog="refundguard", description="Refund-only abuse detection: scores, model, decisions.")
    parser.add_argument("--version", action="version", version=f"refundguard {__version__}")
    _add_global_options(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():
        _add_global_options(command, default=argparse.SUPPRESS)
    return parser


def _warning_line(debug: bool) -> Callable[..., None]:
    """A ``warnings.showwarning`` printing one clean line, ``refundguard: warning: <message>``.

    With ``--debug`` the line also names the warning's class and where it was raised.
    """

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        where = f" [{category.__name__} at {filename}:{lineno}]" if debug else ""
        text = " ".join(str(message).split())
        print(f"refundguard: warning: {text}{where}", file=sys.stderr if file is None else file)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():  # restores the caller's warning display on return
        warnings.showwarning = _warning_line(bool(args.debug))
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Checks, then the command; map errors to exit codes and one line on stderr."""
    try:
        _run_checks(args)
        code = int(args.func(args))
        sys.stdout.flush()  # (here, so a reader that went away is seen inside this try)
        return code
    except BrokenPipeError:  # the reader went away (``refundguard score ... | head``): nothing more to say
        # (Python's documented idiom: later writes, the interpreter's last flush included, go nowhere)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
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
    except ImportError as exc:  # an optional extra (matplotlib for plots) is not installed
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
