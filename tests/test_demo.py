"""The end-to-end demo as a library call: its figures, its files and its printed text."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from refundguard.config import DEFAULT_GATE
from refundguard.demo import DemoResult, action_table, run_demo
from refundguard.policy import ACTIONS, PolicyTimeline

GATE_DATE = PolicyTimeline.default().versions[-1].effective_from


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoResult:
    """One small demo run (80 days from the simulator's first day: it spans the gate date)."""
    return run_demo(tmp_path_factory.mktemp("demo") / "out", buyers=400, stores=20, days=80, seed=3)


def test_the_demo_writes_the_data_and_every_decision(demo):
    assert sorted(p.name for p in demo.data.iterdir()) == ["orders", "refunds", "reviews", "service"]
    assert demo.data == demo.out / "data" and demo.scored_path == demo.out / "scored.csv"
    scored = pd.read_csv(demo.scored_path)
    assert len(scored) == demo.decided == demo.rows["refunds"]
    assert demo.rejects == 0 and demo.simulation.days == 80


def test_the_action_table_splits_at_the_policy_date(demo):
    table = demo.actions
    assert demo.policy_date == GATE_DATE
    assert list(table.index) == list(ACTIONS) and table.index.name == "action"
    assert list(table.columns) == [f"before {GATE_DATE}", f"from {GATE_DATE}"]
    assert int(table.to_numpy().sum()) == demo.decided
    assert table.loc["merchant_handles", f"before {GATE_DATE}"] == 0  # no store gate before the date
    scored = pd.read_csv(demo.scored_path)
    assert (table.sum(axis=1) == scored["action"].value_counts().reindex(list(ACTIONS), fill_value=0)).all()


def test_action_table_counts_zero_for_absent_actions():
    scored = pd.DataFrame(
        {
            "requested_at": pd.to_datetime(["2024-08-08T23:59:59Z", "2024-08-09T00:00:00Z", "2024-08-10T00:00:00Z"]),
            "action": ["approve", "merchant_handles", "approve"],
        }
    )
    table = action_table(scored, pd.Timestamp("2024-08-09").date())
    assert table.to_dict("list") == {"before 2024-08-09": [0, 1, 0, 0], "from 2024-08-09": [1, 1, 0, 0]}


def test_store_scores_are_summarised_with_the_library_gate(demo):
    s = demo.store_scores
    assert s.gate == DEFAULT_GATE and s.stores == 20 and 0 <= s.gated <= s.scored <= s.stores
    assert demo.scores_as_of == demo.simulation.end_ts.date()


def test_the_online_decision_is_an_intercept_with_its_latency(demo):
    assert demo.online is not None
    assert demo.online.decision.action == "intercept"
    assert 0 < demo.online.p50_us <= demo.online.p99_us


def test_the_text_is_what_the_demo_prints(demo):
    text = demo.to_text()
    assert text == "\n".join(demo.lines())
    lines = demo.lines()
    assert lines[0].startswith(f"1. simulated {demo.rows['orders']:,} orders") and lines[0].endswith(str(demo.data))
    assert lines[1] == "2. validated against the data contract: 0 rejects"
    assert f"at {DEFAULT_GATE:.2f} or more" in lines[2]
    assert lines[4].split() == ["before", str(GATE_DATE), "from", str(GATE_DATE)]
    assert lines[5].strip() == "action" and lines[5] == lines[5].rstrip()
    assert [line.split()[0] for line in lines[6:10]] == list(ACTIONS)
    assert lines[10].startswith("5. against the simulated labels") and lines[11].startswith("6. online")
    assert not re.search(r"\d\.0*[1-9]\d{4,}", text)  # no raw floats


@pytest.mark.extras
def test_the_demo_writes_the_analyst_report(demo):
    from refundguard.monitoring import FIGURES

    assert demo.report == demo.out / "report" / "index.html" and demo.report.is_file()
    assert {p.name for p in demo.report.parent.iterdir()} == {"index.html", *FIGURES}
    page = demo.report.read_text(encoding="utf-8")
    assert all(f'src="{name}"' in page for name in FIGURES)
    assert demo.lines()[-1] == f"7. analyst report (plots, metrics by category and store band, the gate) -> {demo.report}"


def test_the_demo_says_where_the_report_is_or_how_to_get_it(demo):
    from refundguard.monitoring.plots import INSTALL_HINT, available

    last = demo.lines()[-1]
    if available():
        assert demo.report is not None and last.endswith(str(demo.report))
    else:
        assert demo.report is None and last.startswith("7. analyst report skipped") and INSTALL_HINT in last


def test_a_run_replaces_a_data_folder_left_by_an_earlier_one(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "stale.txt").write_text("left over")
    result = run_demo(tmp_path, buyers=60, stores=5, days=30, seed=1, report=False)
    assert sorted(p.name for p in result.data.iterdir()) == ["orders", "refunds", "reviews", "service"]
    assert result.report is None and not (tmp_path / "report").exists()
