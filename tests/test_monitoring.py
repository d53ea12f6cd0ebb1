"""Analyst tools: PSI drift, policy what-if replays and the HTML report, on a small simulated marketplace."""

from __future__ import annotations

import dataclasses
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refundguard as rg
from refundguard.artifacts import feature_bins, load_model, score_histogram
from refundguard.errors import ConfigError, DataError, ModelError
from refundguard.features import FEATURE_NAMES
from refundguard.guard import RefundGuard, default_model_path
from refundguard.monitoring import (
    FIGURES,
    PolicyVariant,
    apply_review_capacity,
    drift,
    drift_table,
    psi,
    replay,
    score_period,
    whatif,
)
from refundguard.monitoring.drift import PSI_MODERATE, PSI_SIGNIFICANT, binned_shares, expected_shares, psi_flag
from refundguard.monitoring.whatif import (
    clopper_pearson,
    rate_ratio_interval,
    threshold_at_precision,
    variant_timeline,
)
from refundguard.pipeline import point_in_time_features
from refundguard.policy import ACTIONS, PolicyTimeline, gate_batch

#: A high audit rate, so that the audit sample behind the gate holds enough requests to estimate from.
AUDIT_RATE = 0.25


@pytest.fixture(scope="module")
def tables():
    clean, _ = rg.validate(rg.simulate(n_buyers=4_000, n_stores=120, days=120, seed=21))
    return clean


@pytest.fixture(scope="module")
def guard():
    return RefundGuard.default()


@pytest.fixture(scope="module")
def audited_guard():
    """The default model with a policy that audits a quarter of the gated requests."""
    return RefundGuard.load(default_model_path(), policy=PolicyTimeline.default(audit_rate=AUDIT_RATE))


@pytest.fixture(scope="module")
def period(audited_guard, tables):
    return score_period(audited_guard, tables, validate_tables=False)


@pytest.fixture(scope="module")
def batch(guard, tables):
    return point_in_time_features(tables, score_config=guard.score_config, category_levels=guard.category_levels)


# --------------------------------------------------------------------------- the guard's accessor and the period
def test_feature_importance_is_the_boosters(guard):
    gain = guard.feature_importance()
    booster = load_model(default_model_path()).booster
    assert list(gain.index) == list(FEATURE_NAMES)
    assert np.allclose(gain.to_numpy(), booster.feature_importance(importance_type="gain"))
    split = guard.feature_importance("split")
    assert split.sum() == booster.feature_importance(importance_type="split").sum() > 0
    with pytest.raises(ConfigError, match="importance_type"):
        guard.feature_importance("cover")


def test_a_scored_period_has_every_probability_and_the_labels_of_the_refunds(period, tables):
    rows = period.rows
    assert rows["abuse_probability"].notna().all()  # gated requests are scored too
    refunds = tables["refunds"].set_index("refund_id")
    assert len(rows) == len(refunds)
    expected = refunds.loc[rows["refund_id"], "is_abuse"].astype("boolean").to_numpy()
    got = rows["is_abuse"].to_numpy()
    assert (pd.isna(expected) == pd.isna(got)).all()
    known = ~pd.isna(expected)
    assert (expected[known] == got[known]).all()
    assert period.n_days == int(rows["day"].max() - rows["day"].min() + 1)
    assert (rows["action"] == "merchant_handles").any() and rows["audit"].any()


def test_a_period_bounds_count_its_days_and_an_empty_period_is_a_data_error(audited_guard, tables):
    p = score_period(audited_guard, tables, "2024-08-01", "2024-08-15", validate_tables=False)
    assert p.n_days == 14 and p.period_text == "2024-08-01 to 2024-08-14"
    with pytest.raises(DataError, match="No refund requested"):
        score_period(audited_guard, tables, "2030-01-01", "2030-02-01", validate_tables=False)


# --------------------------------------------------------------------------- PSI
def test_psi_of_known_shares():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert math.isclose(psi([0.5, 0.5], [0.9, 0.1]), 0.4 * math.log(1.8) + 0.4 * math.log(5), rel_tol=1e-12)
    assert psi([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == 0.0  # an empty bin on both sides adds nothing
    with pytest.raises(DataError, match="same bins"):
        psi([0.5, 0.5], [1.0])


def test_psi_flags():
    assert [psi_flag(v) for v in (0.0, PSI_MODERATE - 1e-9, PSI_MODERATE, PSI_SIGNIFICANT - 1e-9,
                                  PSI_SIGNIFICANT, 3.0, math.nan)] == \
        ["stable", "stable", "moderate", "moderate", "significant", "significant", "n/a"]


@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=30, max_size=300, unique=True),
    n_missing=st.integers(0, 20),
)
def test_psi_of_a_numeric_sample_against_its_own_bins_is_zero_and_against_a_shifted_copy_large(values, n_missing):
    x = pd.Series(values + [np.nan] * n_missing)
    spec = feature_bins(pd.DataFrame({"f": x}))["f"]
    assert math.isclose(float(binned_shares(spec, x).sum()), 1.0, rel_tol=1e-12)
    assert psi(expected_shares(spec), binned_shares(spec, x)) < 1e-9
    shifted = x + (max(values) - min(values)) + 1.0  # every value above the top edge
    assert psi(expected_shares(spec), binned_shares(spec, shifted)) > PSI_SIGNIFICANT


@given(codes=st.lists(st.integers(0, 4), min_size=20, max_size=200))
def test_psi_of_a_categorical_sample_against_its_own_bins_is_zero(codes):
    levels = ["a", "b", "c", "d", "e"]
    x = pd.Series(pd.Categorical([levels[c] for c in codes], categories=levels))
    spec = feature_bins(pd.DataFrame({"f": x}), categories={"f": levels})["f"]
    assert psi(expected_shares(spec), binned_shares(spec, x)) < 1e-9
    unseen = pd.Series(["z"] * len(codes))  # a level never seen: the "other" bin
    assert psi(expected_shares(spec), binned_shares(spec, unseen)) > PSI_SIGNIFICANT


def test_a_period_against_its_own_bins_is_stable_and_against_a_shifted_copy_is_not(guard, batch):
    X = batch.X
    p = guard.predict_proba(X)
    gated = gate_batch(batch.policy_requests(), guard.policy)["gated"].to_numpy()
    levels = {"category": list(guard.category_levels), "kind": list(X["kind"].cat.categories),
              "reason": list(X["reason"].cat.categories)}
    reference = {"feature_bins": feature_bins(X, categories=levels), "score_histogram": score_histogram(p)}
    same = drift_table(reference, X, p, gated, gated_share=float(gated.mean()))
    assert len(same) == len(FEATURE_NAMES) + 2
    assert same["psi"].max() < 1e-9 and set(same["flag"]) == {"stable"}

    shifted = X.copy()
    shifted["amount"] = X["amount"] * 10
    shifted["buyer_tenure_days"] = X["buyer_tenure_days"] + 1_000
    other = drift_table(reference, shifted, np.clip(p + 0.3, 0, 1), np.ones_like(gated),
                        gated_share=float(gated.mean()))
    by_name = other.set_index("name")
    for name in ("amount", "buyer_tenure_days", "score", "gated_share"):
        assert by_name.loc[name, "psi"] > PSI_SIGNIFICANT and by_name.loc[name, "flag"] == "significant", name
    assert by_name.loc["amount", "moved_bin"].startswith(">= ")  # every amount moved to the top bin
    assert by_name.loc["category", "psi"] < 1e-9  # untouched features stay put


def test_drift_end_to_end_against_the_bundled_models_bins(guard, tables):
    report = drift(guard, tables, "2024-08-01", "2024-10-01", validate_tables=False)
    t = report.table
    assert list(t["name"][:2]) == ["score", "gated_share"]
    assert set(t["name"][2:]) == set(FEATURE_NAMES)
    assert (t["psi"] >= 0).all() and t["psi"].notna().all()
    assert list(t["flag"]) == [psi_flag(v) for v in t["psi"]]
    assert list(t["psi"][2:]) == sorted(t["psi"][2:], reverse=True)
    assert report.n > 0 and report.psi("score") == float(t["psi"].iloc[0])
    assert math.isclose(t.set_index("name").loc["gated_share", "expected"], guard.meta["gated_share"])
    assert (report.flagged["psi"] >= PSI_MODERATE).all()
    text = report.to_text()
    assert f"PSI of {report.n:,} requests" in text and len(report.lines()) == len(t) + 4
    assert math.isclose(report.score_actual.sum(), 1.0) and math.isclose(report.score_expected.sum(), 1.0)


def test_drift_needs_the_training_bins(guard, tables):
    loaded = load_model(default_model_path())
    meta = {k: v for k, v in loaded.meta.items() if k != "drift"}
    without = RefundGuard(dataclasses.replace(loaded, meta=meta))
    with pytest.raises(ModelError, match="training bins"):
        drift(without, tables, validate_tables=False)


def test_drift_csv(guard, tables, tmp_path):
    report = drift(guard, tables, "2024-09-01", None, validate_tables=False)
    written = report.to_csv(tmp_path / "drift.csv")
    back = pd.read_csv(written)
    assert list(back["name"]) == list(report.table["name"])
    assert np.allclose(back["psi"], report.table["psi"])


# --------------------------------------------------------------------------- what-if
def test_review_capacity_on_a_small_example():
    action = ["review", "review", "review", "approve", "review", "review", "review", "intercept"]
    p = [0.30, 0.50, 0.40, 0.01, 0.20, 0.90, 0.20, 0.95]
    day = [1, 1, 1, 1, 2, 2, 2, 2]
    out = apply_review_capacity(action, p, day, 2)
    # day 1 keeps 0.50 and 0.40; day 2 keeps 0.90 and, of the two at 0.20, the earlier row
    assert list(out) == ["approve", "review", "review", "approve", "review", "review", "approve", "intercept"]
    assert list(apply_review_capacity(action, p, day, None)) == action
    assert list(apply_review_capacity(action, p, day, 0)) == [a if a != "review" else "approve" for a in action]


@given(
    rows=st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 1000), st.integers(0, 3)), max_size=120),
    capacity=st.integers(0, 5),
)
def test_the_capacity_rule_holds(rows, capacity):
    action = np.array([r[0] for r in rows], dtype=object)
    p = np.array([r[1] for r in rows], dtype=np.float64) / 1000
    day = np.array([r[2] for r in rows], dtype=np.int64)
    out = apply_review_capacity(action, p, day, capacity)
    assert ((out == action) | ((action == "review") & (out == "approve"))).all()  # only reviews change, to approve
    for d in np.unique(day):
        today = day == d
        kept = today & (out == "review")
        overflow = today & (action == "review") & (out == "approve")
        assert kept.sum() == min(capacity, int((today & (action == "review")).sum()))
        if kept.any() and overflow.any():
            assert p[overflow].max() <= p[kept].min()  # the approved overflow are the lowest-risk reviews


def test_threshold_at_precision_is_the_lowest_reaching_the_target():
    curve = {"threshold": [0.9, 0.7, 0.5, 0.3, 0.1], "precision": [1.0, 0.95, 0.9, 0.6, 0.3]}
    assert threshold_at_precision(curve, 0.9) == 0.5
    assert threshold_at_precision(curve, 0.95) == 0.7
    assert threshold_at_precision(curve, 0.2) == 0.1
    assert threshold_at_precision({"threshold": [0.5], "precision": [0.8]}, 0.9) is None


def test_a_variant_moves_only_the_gates_that_exist():
    timeline = variant_timeline(PolicyTimeline.default(), 4.6, 0.7, 0.2)
    first, last = timeline.versions
    assert first.gate is None and last.gate == 4.6
    assert {v.intercept_threshold for v in timeline.versions} == {0.7}
    assert {v.review_threshold for v in timeline.versions} == {0.2}
    assert variant_timeline(PolicyTimeline.default(), None, None, None).versions[-1].gate is None


def test_the_intervals_have_their_textbook_values():
    lo, hi = clopper_pearson(0, 5)
    assert lo == 0.0 and math.isclose(hi, 1 - 0.025 ** (1 / 5), rel_tol=1e-9)
    lo, hi = clopper_pearson(5, 5)
    assert math.isclose(lo, 0.025 ** (1 / 5), rel_tol=1e-9) and hi == 1.0
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    ratio, lo, hi = rate_ratio_interval(0, 2.0)
    assert ratio == 0.0 and lo == 0.0 and math.isclose(hi, -math.log(0.025) / 2.0, rel_tol=1e-9)
    ratio, lo, hi = rate_ratio_interval(4, 2.0)
    assert ratio == 2.0 and lo < 2.0 < hi
    assert rate_ratio_interval(3, 0.0) == (1.0, 0.0, math.inf)


@given(gates=st.lists(st.floats(3.0, 5.0), min_size=2, max_size=4, unique=True))
def test_raising_the_gate_never_raises_the_share_the_merchant_handles(period, audited_guard, gates):
    table = replay(period, audited_guard.policy, [PolicyVariant(g) for g in sorted(gates)]).table
    for column in ("gated_share", "abuse_to_merchants", "abuse_to_merchants_low", "abuse_to_merchants_high"):
        values = table[column].to_numpy()
        assert (np.diff(values) <= 1e-9).all(), column


def _truth_behind(rows: pd.DataFrame, action: np.ndarray) -> float:
    y = rows["is_abuse"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    m = (action == "merchant_handles") & ~np.isnan(y)
    return float((rows["amount"].to_numpy()[m] * y[m]).sum())


def test_with_every_label_the_amounts_are_exact_and_add_up(period, audited_guard):
    variants = [PolicyVariant(g) for g in (4.6, 4.7, 4.8, 4.9, None)]
    table = replay(period, audited_guard.policy, variants, censor="none").table
    rows = period.rows
    y = rows["is_abuse"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    total = float(np.nansum(rows["amount"].to_numpy() * y))
    parts = table[["abuse_to_merchants", "abuse_stopped", "abuse_in_review", "abuse_approved"]].sum(axis=1)
    assert np.allclose(parts, total)
    assert (table["abuse_to_merchants_low"] == table["abuse_to_merchants"]).all()
    assert (table["abuse_to_merchants_high"] == table["abuse_to_merchants"]).all()
    own = table.iloc[2]  # the policy's own gate: the decisions of the period
    assert math.isclose(own["abuse_to_merchants"], _truth_behind(rows, rows["action"].to_numpy()))
    assert math.isclose(own["gated_share"], float((rows["action"] == "merchant_handles").mean()))
    assert table.iloc[-1]["gated_share"] == 0.0 and table.iloc[-1]["abuse_to_merchants"] == 0.0
    assert table["unlabelled"].iloc[0] == int(np.isnan(y).sum())


def test_behind_the_gate_the_audit_sample_estimate_brackets_the_truth(period, audited_guard):
    table = replay(period, audited_guard.policy, [PolicyVariant(4.8)]).table
    row = table.iloc[0]
    rows = period.rows
    assert row["audit_sample"] == int((rows["audit"] & rows["is_abuse"].notna()).sum()) > 0
    assert row["censored"] == int(((rows["action"] == "merchant_handles") & ~rows["audit"]).sum()) > 0
    assert row["abuse_to_merchants_low"] <= row["abuse_to_merchants"] <= row["abuse_to_merchants_high"]
    assert row["abuse_to_merchants_low"] < row["abuse_to_merchants_high"]  # censored labels: an interval
    truth = _truth_behind(rows, rows["action"].to_numpy())
    assert row["abuse_to_merchants_low"] <= truth <= row["abuse_to_merchants_high"]


def test_the_estimates_behind_the_gate_add_up_to_one_total_under_every_variant(period, audited_guard):
    variants = [PolicyVariant(g) for g in (4.0, 4.8, 4.95, None)]
    table = replay(period, audited_guard.policy, variants).table
    parts = table[["abuse_to_merchants", "abuse_stopped", "abuse_in_review", "abuse_approved"]].sum(axis=1)
    assert np.allclose(parts, parts.iloc[0])
    assert (table["censored"] == table["censored"].iloc[0]).all()  # the censoring is the period's, not the variant's


def test_review_capacity_and_intercept_precision_variants(period, audited_guard):
    curve = audited_guard.meta["validation_curve"]
    variants = [PolicyVariant(4.8, q) for q in (0.5, 0.9, 0.99)]
    free = replay(period, audited_guard.policy, variants, validation_curve=curve).table
    thresholds = free["intercept_threshold"].to_numpy()
    assert (np.diff(thresholds) > 0).all()  # a higher precision needs a higher threshold
    assert (np.diff(free["intercepts_per_day"]) <= 0).all() and (np.diff(free["honest_intercepted"]) <= 1e-9).all()
    assert (free["review_threshold"] <= free["intercept_threshold"]).all()
    capped = replay(period, audited_guard.policy, variants, validation_curve=curve, review_capacity=1).table
    assert (capped["reviews_max_day"] <= 1).all() and (capped["overflow_approved"] > 0).any()
    days = period.n_days
    assert np.allclose(capped["reviews_per_day"] * days + capped["overflow_approved"], free["reviews_per_day"] * days)
    assert (capped["intercepts_per_day"] == free["intercepts_per_day"]).all()
    assert np.allclose(capped["gated_share"], free["gated_share"])
    with pytest.raises(ModelError, match="validation curve"):
        replay(period, audited_guard.policy, variants)
    own = audited_guard.meta["thresholds"]  # the model's own target: its exact threshold, not the thinned curve's
    exact = replay(period, audited_guard.policy, [PolicyVariant(4.8, own["intercept_precision"])],
                   thresholds=own).table.iloc[0]
    assert exact["intercept_threshold"] == own["intercept"]


def test_whatif_end_to_end_and_its_parameters(audited_guard, tables):
    result = whatif(audited_guard, tables, "2024-08-09", None, gates=[4.7, 4.8], intercept_precisions=[None, 0.95],
                    review_capacity=3, validate_tables=False)
    t = result.table
    assert list(t["variant"]) == ["gate 4.70", "gate 4.70, precision 0.95", "gate 4.80", "gate 4.80, precision 0.95"]
    assert (t["reviews_max_day"] <= 3).all()
    text = result.to_text()
    assert "review capacity 3 per day" in text and "gate 4.70, precision 0.95" in text
    assert not re.search(r"\d\.0*[1-9]\d{4,}", text)
    default = whatif(audited_guard, tables, "2024-08-09", None, validate_tables=False)
    assert list(default.table["gate"]) == [audited_guard.policy.versions[-1].gate]
    for kw, name in ((dict(gates=[7.0]), "gates"), (dict(gates=[]), "gates"),
                     (dict(intercept_precisions=[1.5]), "intercept_precisions"),
                     (dict(review_capacity=-1), "review_capacity"), (dict(censor="some"), "censor"),
                     (dict(confidence=1.0), "confidence")):
        with pytest.raises(ConfigError, match=name):
            whatif(audited_guard, tables, gates=kw.pop("gates", None), validate_tables=False, **kw)


def test_whatif_csv(audited_guard, tables, tmp_path):
    result = whatif(audited_guard, tables, "2024-09-01", None, gates=[4.6, None], validate_tables=False)
    back = pd.read_csv(result.to_csv(tmp_path / "whatif.csv"))
    assert list(back["variant"]) == ["gate 4.60", "no gate"]


# --------------------------------------------------------------------------- the report
class _Refs(HTMLParser):
    """Every src/href of a page, and whether it has a script, stylesheet link or import."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs.extend(v for k, v in attrs if k in ("src", "href") and v is not None)


def test_the_report_says_how_to_get_matplotlib_when_it_is_missing(monkeypatch, guard, tables, tmp_path):
    import refundguard.monitoring.report as report_module

    monkeypatch.setattr(report_module, "available", lambda: False)
    with pytest.raises(ImportError, match=r"refundguard\[report\]"):
        report_module.write_report(guard, tables, tmp_path / "r", validate_tables=False)
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def report(guard, tables, tmp_path_factory):
    pytest.importorskip("matplotlib")
    from refundguard.monitoring import write_report

    return write_report(guard, tables, tmp_path_factory.mktemp("report") / "out", validate_tables=False)


@pytest.mark.extras
def test_the_report_references_every_png_and_opens_without_network(report):
    page = report.index.read_text(encoding="utf-8")
    parser = _Refs()
    parser.feed(page)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert not re.search(r"https?://|@import|url\(", page)
    for ref in parser.refs:
        parsed = urlparse(ref)
        assert not parsed.scheme and not parsed.netloc and not ref.startswith("/"), ref
        assert (report.folder / ref).is_file(), ref
    pngs = {p.name for p in report.folder.glob("*.png")}
    assert pngs == set(FIGURES) == set(parser.refs) == {p.name for p in report.figures}
    for png in report.figures:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in report.folder.iterdir()) == sorted([*FIGURES, "index.html"])


@pytest.mark.extras
def test_the_report_opens_with_its_summary(report):
    page = report.index.read_text(encoding="utf-8")
    s = report.summary
    summary = re.search(r'<p class="summary">(.*?)</p>', page, re.DOTALL)
    assert summary and page.index('class="summary"') < page.index("<img")
    text = summary.group(1)
    for figure in (f"PR-AUC of {s['pr_auc']:.3f}", f"recall of {s['recall_at_precision']:.1%}",
                   f"{s['abuse_amount_stopped']:,.2f} of abusive refunds stopped",
                   f"{s['honest_amount_held']:,.2f} of honest buyers"):
        assert figure in text, figure
    assert report.evaluation is not None and math.isclose(s["pr_auc"], report.evaluation.overall["pr_auc"])
    assert "false-intercept rate (decided)" in page and "&lt;4.6" in page
    assert f"{len(report.figures)} figures" in report.to_text()


@pytest.mark.extras
def test_every_figure_has_a_title_and_labelled_axes(monkeypatch, guard, tables, tmp_path):
    import refundguard.monitoring.plots as plots
    from refundguard.monitoring import write_report

    seen = []
    original = plots._save

    def check(fig, path):
        for ax in fig.axes:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), (Path(path).name, ax.get_title())
        seen.append(Path(path).name)
        return original(fig, path)

    monkeypatch.setattr(plots, "_save", check)
    write_report(guard, tables, tmp_path / "r", "2024-08-01", "2024-10-01", validate_tables=False)
    drift(guard, tables, "2024-09-01", None, validate_tables=False).plot(tmp_path / "drift.png")
    whatif(guard, tables, "2024-09-01", None, gates=[4.6, 4.8], validate_tables=False).plot(tmp_path / "w.png")
    assert seen == [*FIGURES, "drift.png", "w.png"]


@pytest.mark.extras
def test_a_report_replaces_an_earlier_one_but_nothing_else(guard, tables, report, tmp_path):
    from refundguard.monitoring import write_report

    again = write_report(guard, tables, report.folder, "2024-09-01", None, validate_tables=False)
    assert again.summary["requests"] < report.summary["requests"]
    assert not [p for p in report.folder.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="out"):
        write_report(guard, tables, other, validate_tables=False)
    assert (other / "keep.txt").read_text() == "mine"
