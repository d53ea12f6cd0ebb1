"""The end-to-end demo on the bundled default model.

One function, :func:`run_demo`: simulate a small marketplace (a seed the default
model never saw), validate it, compute the store experience scores, decide every
refund with :meth:`RefundGuard.default` and the dated policy, compare with the
simulated labels, decide one request online while timing it, and write the
analyst report (when matplotlib, the ``report`` extra, is installed). It returns a
:class:`DemoResult` holding every figure; :meth:`DemoResult.to_text` renders the
lines ``refundguard demo`` prints.

>>> from refundguard.demo import run_demo
>>> print(run_demo("refundguard-demo").to_text())  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from refundguard.config import DEFAULT_GATE
from refundguard.evaluation import Evaluation
from refundguard.guard import RefundGuard, write_scored
from refundguard.monitoring import plots, write_report
from refundguard.pipeline import point_in_time_features
from refundguard.policy import ACTIONS, Decision
from refundguard.profiles import request_record
from refundguard.scores import StoreScoreSummary, store_scores, summarize_store_scores
from refundguard.simulate import SimulationConfig, simulate_to_parquet
from refundguard.tables import load_tables, validate

__all__ = [
    "DEMO_BUYERS",
    "DEMO_DAYS",
    "DEMO_SEED",
    "DEMO_STORES",
    "ONLINE_REPEATS",
    "DemoResult",
    "OnlineTiming",
    "action_table",
    "run_demo",
]

#: Default size of the demo marketplace and its seed (one the default model never saw).
DEMO_BUYERS = 6_000
DEMO_STORES = 200
DEMO_DAYS = 150
DEMO_SEED = 7
#: How many times the online decision is repeated to measure its latency.
ONLINE_REPEATS = 2_000


@dataclass(frozen=True)
class OnlineTiming:
    """One request decided online (``guard.assess(request, profiles)``) and its latency.

    Attributes
    ----------
    decision
        The decision.
    p50_us, p99_us
        Median and 99th percentile of :data:`ONLINE_REPEATS` calls, in microseconds.
    """

    decision: Decision
    p50_us: float
    p99_us: float


@dataclass(frozen=True, eq=False)
class DemoResult:
    """Every figure of one demo run.

    Attributes
    ----------
    out, data, scored_path
        The output folder, the simulated data folder in it, and the scored CSV.
    simulation
        The simulator's configuration.
    rows
        Rows simulated per table (``orders``, ``refunds``, ``reviews``, ``service``).
    rejects
        Rows rejected by the data contract (strict validation; 0 when it passes).
    scores_as_of
        Day of the store experience scores (the end of the simulated period).
    store_scores
        Summary of those scores (stores, at or above the gate, provisional, median).
    decided, decide_seconds
        Refunds decided in batch and the seconds it took.
    model_version
        Version of the bundled model.
    policy_date
        ``effective_from`` of the policy's last version (the store gate).
    actions
        Refunds per action (index :data:`~refundguard.policy.ACTIONS`, named
        ``action``) before and from ``policy_date`` (two columns).
    evaluation
        The model measured against the simulated labels.
    online
        One intercepted request decided online, with its latency; ``None`` when no
        request was intercepted.
    report
        The analyst report's ``index.html`` (in ``out/report``); ``None`` when it
        was not written (matplotlib missing, or ``report=False``).
    """

    out: Path
    data: Path
    scored_path: Path
    simulation: SimulationConfig
    rows: Mapping[str, int]
    rejects: int
    scores_as_of: date
    store_scores: StoreScoreSummary
    decided: int
    decide_seconds: float
    model_version: str
    policy_date: date
    actions: pd.DataFrame
    evaluation: Evaluation
    online: OnlineTiming | None
    report: Path | None = None

    def lines(self) -> list[str]:
        """The demo's printed lines, one per list item."""
        rows, s, o = self.rows, self.store_scores, self.evaluation.overall
        columns = self.actions.columns
        table = self.actions.to_string(
            formatters={c: "{:,d}".format for c in columns}, col_space={c: len(str(c)) + 1 for c in columns}
        )
        out = [
            (
                f"1. simulated {rows['orders']:,} orders, {rows['refunds']:,} refunds, {rows['reviews']:,} reviews, "
                f"{rows['service']:,} chats from {self.simulation.start_ts.date()} for {self.simulation.days} days "
                f"-> {self.data}"
            ),
            f"2. validated against the data contract: {self.rejects:,} rejects",
            (
                f"3. store experience scores on {self.scores_as_of}: {s.stores:,} stores, {s.gated:,} at "
                f"{s.gate:.2f} or more ({s.gated / max(s.stores, 1):.1%}), {s.provisional:,} provisional, "
                f"median {s.median_score:.2f}"
            ),
            (
                f"4. decided {self.decided:,} refunds in {self.decide_seconds:.1f} s with model "
                f"{self.model_version} -> {self.scored_path}"
            ),
            *(f"   {line}".rstrip() for line in table.splitlines()),
            (
                f"5. against the simulated labels ({o['n']:,} labelled, {o['positive_rate']:.1%} abusive): "
                f"PR-AUC {o['pr_auc']:.3f}, ROC-AUC {o['roc_auc']:.3f}, "
                f"recall at 90% precision {o['recall_at_precision']:.3f}, ECE {o['ece']:.4f}"
            ),
        ]
        if self.online is not None:
            d = self.online.decision
            p = "not scored" if d.abuse_probability is None else f"p={d.abuse_probability:.3f}"
            out.append(
                f"6. online: guard.assess(request, profiles) for {d.refund_id} -> {d.action} "
                f"({p}, policy {d.policy_version}); p50 {self.online.p50_us:.0f} us, p99 {self.online.p99_us:.0f} us"
            )
            out.extend(f"   - {r['text']}" for r in d.reasons)
        if self.report is not None:
            out.append(f"7. analyst report (plots, metrics by category and store band, the gate) -> {self.report}")
        elif not plots.available():
            out.append(f"7. analyst report skipped: it needs matplotlib ({plots.INSTALL_HINT})")
        return out

    def to_text(self) -> str:
        """The demo's printed text (:meth:`lines` joined by newlines)."""
        return "\n".join(self.lines())


def action_table(scored: pd.DataFrame, cut: date) -> pd.DataFrame:
    """Refunds per action requested before ``cut`` and from ``cut`` on (00:00 UTC).

    Parameters
    ----------
    scored
        Scored rows with ``requested_at`` and ``action``.
    cut
        The day that splits the two columns.

    Returns
    -------
    pandas.DataFrame
        Index :data:`~refundguard.policy.ACTIONS` (named ``action``), columns
        ``before <cut>`` and ``from <cut>``, integer counts (0 when absent).
    """
    at = pd.Timestamp(cut, tz="UTC")
    before = scored["requested_at"] < at
    table = pd.DataFrame(
        {
            f"before {cut}": scored.loc[before, "action"].value_counts(),
            f"from {cut}": scored.loc[~before, "action"].value_counts(),
        }
    )
    table = table.reindex(list(ACTIONS)).fillna(0).astype(int)
    table.index.name = "action"
    return table


def _time_online(guard: RefundGuard, tables: Mapping[str, pd.DataFrame], row: pd.Series) -> OnlineTiming:
    """Decide one scored request online from its point-in-time profiles and time the call."""
    t = row["requested_at"]
    batch = point_in_time_features(tables, t, t + pd.Timedelta(microseconds=1), score_config=guard.score_config)
    i = int((batch.requests["refund_id"] == row["refund_id"]).to_numpy().argmax())
    request, profiles = request_record(batch.requests, i), batch.profiles.profile(i)
    decision = guard.assess(request, profiles)
    times = []
    for _ in range(ONLINE_REPEATS):
        t0 = time.perf_counter_ns()
        guard.assess(request, profiles)
        times.append(time.perf_counter_ns() - t0)
    times.sort()
    return OnlineTiming(
        decision=decision,
        p50_us=times[len(times) // 2] / 1e3,
        p99_us=times[int(len(times) * 0.99)] / 1e3,
    )


def run_demo(
    out: str | Path,
    *,
    buyers: int = DEMO_BUYERS,
    stores: int = DEMO_STORES,
    days: int = DEMO_DAYS,
    seed: int = DEMO_SEED,
    report: bool = True,
    progress: bool = False,
) -> DemoResult:
    """Run the demo end to end on the bundled default model, writing under ``out``.

    Writes ``out/data`` (the simulated marketplace, replaced if present),
    ``out/scored.csv`` (every refund decided) and ``out/report`` (the analyst
    report, :func:`refundguard.monitoring.write_report`, when matplotlib is installed).

    Parameters
    ----------
    out
        Output folder (created).
    buyers, stores, days, seed
        Size and seed of the simulated marketplace; it starts on the simulator's
        default first day.
    report
        Write the analyst report (skipped without matplotlib).
    progress
        Show a progress bar while simulating.

    Returns
    -------
    DemoResult
    """
    out = Path(out)
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    out.mkdir(parents=True, exist_ok=True)
    sim = SimulationConfig(n_buyers=buyers, n_stores=stores, days=days, seed=seed)
    rows = simulate_to_parquet(sim, data, progress=progress)
    tables, rejects = validate(load_tables(data), mode="strict")

    guard = RefundGuard.default()
    gated_version = guard.policy.versions[-1]  # PolicyTimeline.default(): the version with the store gate
    as_of = sim.end_ts.date()
    scores = store_scores(tables, as_of.isoformat(), guard.score_config)
    gate = DEFAULT_GATE if gated_version.gate is None else gated_version.gate
    summary = summarize_store_scores(scores, guard.score_config, gate=gate)

    started = time.perf_counter()
    scored = guard.score_history(tables, validate_tables=False)
    took = time.perf_counter() - started
    scored_path = write_scored(scored, out / "scored.csv")

    evaluation = guard.evaluate(tables, validate_tables=False)
    hit = scored[scored["action"] == "intercept"]
    online = _time_online(guard, tables, hit.iloc[0]) if len(hit) else None
    written = None
    if report and plots.available():
        written = write_report(guard, tables, out / "report", validate_tables=False).index
    return DemoResult(
        out=out,
        data=data,
        scored_path=scored_path,
        simulation=sim,
        rows=dict(rows),
        rejects=len(rejects),
        scores_as_of=as_of,
        store_scores=summary,
        decided=len(scored),
        decide_seconds=took,
        model_version=guard.model_version,
        policy_date=gated_version.effective_from,
        actions=action_table(scored, gated_version.effective_from),
        evaluation=evaluation,
        online=online,
        report=written,
    )
