"""Tests of the marketplace simulator (refundguard.simulate)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

import importlib

sim = importlib.import_module("refundguard.simulate")  # the module (refundguard.simulate is also the function)
from refundguard.errors import ConfigError
from refundguard.simulate import BLOCK_BUYERS, CATEGORIES, SimulationConfig, simulate, simulate_to_parquet

# two buyer blocks, so block numbering and chunking are exercised
CFG = SimulationConfig(n_buyers=BLOCK_BUYERS + 1_500, n_stores=80, days=60, seed=7)

TS = "datetime64[ns, UTC]"
DTYPES: dict[str, dict[str, str]] = {
    "orders": {
        "order_id": "str", "buyer_id": "str", "store_id": "str", "category": "str", "amount": "float64",
        "paid_at": TS, "ship_by": TS, "shipped_at": TS, "delivered_at": TS, "device_id": "str", "address_id": "str",
    },
    "refunds": {
        "refund_id": "str", "order_id": "str", "requested_at": TS, "kind": "str", "reason": "str",
        "amount": "float64", "resolved_at": TS, "outcome": "str", "escalated": "bool", "is_abuse": "boolean",
        "escalated_at": TS, "abuse_pattern": "str",
    },
    "reviews": {"order_id": "str", "rating": "int64", "created_at": TS},
    "service": {"store_id": "str", "started_at": TS, "first_response_s": "float64"},
}
REASONS = {"not_received", "quality", "not_as_described", "damaged", "wrong_item", "changed_mind", "other"}


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return simulate(CFG)


@pytest.fixture(scope="module")
def joined(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Refunds with their order's columns."""
    return tables["refunds"].merge(tables["orders"], on="order_id", how="left", suffixes=("", "_order"),
                                   validate="many_to_one")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "data"
    simulate_to_parquet(CFG, out, chunk_buyers=1)  # one part per block
    return out


def _read_parts(folder: Path) -> pd.DataFrame:
    parts = sorted(folder.glob("part-*.parquet"))
    assert parts, f"no parts in {folder}"
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def _assert_tables_equal(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert list(a) == list(b)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_tables(tables: dict[str, pd.DataFrame]) -> None:
    _assert_tables_equal(tables, simulate(CFG))


def test_overrides_equal_config(tables: dict[str, pd.DataFrame]) -> None:
    again = simulate(None, n_buyers=CFG.n_buyers, n_stores=CFG.n_stores, days=CFG.days, seed=CFG.seed)
    _assert_tables_equal(tables, again)


def test_different_seed_different_tables(tables: dict[str, pd.DataFrame]) -> None:
    other = simulate(CFG, seed=8)
    for name in tables:
        assert not tables[name].equals(other[name]), name


def test_defaults_cover_policy_date() -> None:
    cfg = SimulationConfig()
    assert cfg.start_ts == pd.Timestamp("2024-06-01", tz="UTC")
    assert cfg.start_ts < pd.Timestamp("2024-08-09", tz="UTC") < cfg.end_ts


# --------------------------------------------------------------------------- contract
def test_columns_and_dtypes(tables: dict[str, pd.DataFrame]) -> None:
    assert list(tables) == ["orders", "refunds", "reviews", "service"]
    for name, spec in DTYPES.items():
        df = tables[name]
        assert list(df.columns) == list(spec), name
        for col, dtype in spec.items():
            assert df[col].dtype == dtype, (name, col, df[col].dtype)
        assert len(df) > 0, name
        assert df.index.equals(pd.RangeIndex(len(df))), name


def test_ids_format_and_uniqueness(tables: dict[str, pd.DataFrame]) -> None:
    o, r = tables["orders"], tables["refunds"]
    assert o["order_id"].is_unique and r["refund_id"].is_unique
    assert o["order_id"].str.fullmatch(r"o\d{8}").all()
    assert r["refund_id"].str.fullmatch(r"r\d{8}").all()
    assert o["buyer_id"].str.fullmatch(r"b\d{6}").all()
    assert o["store_id"].str.fullmatch(r"s\d{4}").all()
    assert o["device_id"].dropna().str.fullmatch(r"d\d{7}").all()
    assert o["address_id"].dropna().str.fullmatch(r"a\d{7}").all()
    assert 0 < o["device_id"].isna().mean() < 0.1
    assert set(o["category"]) <= set(CATEGORIES) and {"apparel", "electronics", "food"} <= set(o["category"])


def test_order_invariants(tables: dict[str, pd.DataFrame]) -> None:
    o = tables["orders"]
    cfg = CFG
    assert (o["amount"] > 0).all() and np.isfinite(o["amount"]).all()
    assert (o["amount"] == o["amount"].round(2)).all()
    assert o["paid_at"].between(cfg.start_ts, cfg.end_ts, inclusive="left").all()
    assert o["paid_at"].notna().all() and o["ship_by"].notna().all()
    hours = (o["ship_by"] - o["paid_at"]) / pd.Timedelta(hours=1)
    assert set(hours.unique()) <= {24.0, 48.0, 72.0} and (hours == 48).mean() > 0.5
    shipped = o["shipped_at"].notna()
    assert (o.loc[shipped, "shipped_at"] >= o.loc[shipped, "paid_at"]).all()
    assert (o["shipped_at"].dropna() < cfg.end_ts).all() and (o["delivered_at"].dropna() < cfg.end_ts).all()
    assert o.loc[~shipped, "delivered_at"].isna().all()
    delivered = o["delivered_at"].notna()
    assert (o.loc[delivered, "delivered_at"] >= o.loc[delivered, "shipped_at"]).all()
    late = (o["shipped_at"] > o["ship_by"]).mean()
    assert 0.02 < late < 0.4
    # shipped but not delivered: lost parcels plus those in transit at the end
    assert (shipped & ~delivered).sum() > 0


def test_refund_invariants(tables: dict[str, pd.DataFrame], joined: pd.DataFrame) -> None:
    r, o = tables["refunds"], tables["orders"]
    assert r["order_id"].isin(o["order_id"]).all()
    assert (joined["requested_at"] >= joined["paid_at"]).all()
    assert (r["requested_at"] < CFG.end_ts).all()
    assert set(r["kind"]) == {"refund_only", "return_and_refund"}
    assert set(r["reason"]) == REASONS
    assert set(r["outcome"].dropna()) == {"refunded", "rejected", "withdrawn"}
    assert (r["amount"] > 0).all()
    sums = r.groupby("order_id")["amount"].sum()
    assert (sums <= o.set_index("order_id")["amount"].reindex(sums.index) + 0.01).all()
    assert (r.groupby("order_id").size() > 1).any()  # some follow-up refunds
    resolved = r["resolved_at"].notna()
    assert (r.loc[resolved, "resolved_at"] >= r.loc[resolved, "requested_at"]).all()
    assert (r["resolved_at"].dropna() < CFG.end_ts).all()
    assert (r["outcome"].isna() == ~resolved).all()
    # labels: known exactly when resolved
    assert (r["is_abuse"].isna() == ~resolved).all()
    assert (r["abuse_pattern"].isna() == ~resolved).all()
    assert ((r["abuse_pattern"] != "none") == r["is_abuse"]).dropna().all()
    assert 0 < (~resolved).sum() < 0.2 * len(r)  # some still open at the end
    # escalations
    esc = r["escalated"]
    assert 0.01 < esc.mean() < 0.3
    assert (r["escalated_at"].notna() == esc).all()
    assert (r.loc[esc, "escalated_at"] >= r.loc[esc, "requested_at"]).all()
    both = esc & resolved
    assert (r.loc[both, "escalated_at"] <= r.loc[both, "resolved_at"]).all()
    assert (esc & ~resolved).any() or esc.sum() < 20


def test_review_and_service_invariants(tables: dict[str, pd.DataFrame]) -> None:
    v, o, s = tables["reviews"], tables["orders"], tables["service"]
    m = v.merge(o[["order_id", "paid_at", "delivered_at"]], on="order_id", how="left", validate="many_to_one")
    assert m["paid_at"].notna().all()
    assert (m["created_at"] >= m["paid_at"]).all() and (m["created_at"] < CFG.end_ts).all()
    assert set(v["rating"]) == {1, 2, 3, 4, 5}
    assert 3.3 < v["rating"].mean() < 4.6
    assert s["store_id"].isin(o["store_id"]).mean() > 0.9
    assert (s["first_response_s"] >= 0).all()
    assert 0.3 < (s["first_response_s"] <= 180).mean() < 0.95
    assert s["started_at"].between(CFG.start_ts, CFG.end_ts, inclusive="left").all()


def test_sizes_and_label_rate(tables: dict[str, pd.DataFrame]) -> None:
    o, r = tables["orders"], tables["refunds"]
    per_buyer_day = len(o) / (CFG.n_buyers * CFG.days)
    assert 0.08 < per_buyer_day < 0.17  # 300k..600k orders for 20k buyers x 180 days
    assert 0.05 < len(r) / len(o) < 0.2
    rate = r["is_abuse"].dropna().astype(bool).mean()
    assert 0.05 <= rate <= 0.15, rate


# --------------------------------------------------------------------------- behaviours
def test_store_quality_drives_legit_refunds(tables: dict[str, pd.DataFrame], joined: pd.DataFrame) -> None:
    stores = sim._make_stores(CFG)
    bad = stores.bad(np.arange(CFG.n_stores), np.full(CFG.n_stores, 0.5))
    store_bad = pd.Series(bad, index=[f"s{i + 1:04d}" for i in range(CFG.n_stores)])
    o = tables["orders"]
    good = o["store_id"].map(store_bad) < np.quantile(bad, 0.25)
    poor = o["store_id"].map(store_bad) > np.quantile(bad, 0.75)
    quality_reasons = ["quality", "not_as_described", "damaged", "wrong_item"]
    legit = joined[joined["is_abuse"].eq(False) & joined["reason"].isin(quality_reasons)]
    legit_good = legit["store_id"].map(store_bad) < np.quantile(bad, 0.25)
    legit_poor = legit["store_id"].map(store_bad) > np.quantile(bad, 0.75)
    assert legit_poor.sum() / poor.sum() > 2 * legit_good.sum() / good.sum()
    late_good = (o.loc[good, "shipped_at"] > o.loc[good, "ship_by"]).mean()
    late_poor = (o.loc[poor, "shipped_at"] > o.loc[poor, "ship_by"]).mean()
    assert late_poor > 2 * late_good
    # abuse also hits the best stores
    abuse = joined[joined["is_abuse"].eq(True)]
    assert (abuse["store_id"].map(store_bad) < 0.05).sum() > 10


def test_rings_share_devices_and_addresses(tables: dict[str, pd.DataFrame], joined: pd.DataFrame) -> None:
    o = tables["orders"]
    per_device = o.groupby("device_id")["buyer_id"].nunique()
    shared = per_device[per_device >= 3].index
    assert len(shared) >= 3
    ring_devices = set(joined.loc[joined["abuse_pattern"] == "ring", "device_id"].dropna())
    assert ring_devices & set(shared)
    per_address = o.groupby("address_id")["buyer_id"].nunique()
    assert (per_address >= 3).sum() >= 3
    # households, public devices and pickup points: honest buyers share too, so sharing alone is not abuse
    assert (per_address == 2).sum() > 0
    honest_buyers = set(joined.loc[joined["is_abuse"].eq(False), "buyer_id"]) - set(
        joined.loc[joined["abuse_pattern"].isin(["ring", "serial"]), "buyer_id"])
    honest_orders = o[o["buyer_id"].isin(honest_buyers)]
    assert honest_orders["device_id"].isin(shared).any()
    assert honest_orders["address_id"].isin(per_address[per_address >= 3].index).any()


def test_rings_strike_in_bursts(joined: pd.DataFrame) -> None:
    ring = joined[joined["abuse_pattern"] == "ring"].sort_values("requested_at")
    assert len(ring) > 20
    assert (ring["kind"] == "refund_only").mean() > 0.7
    counts = (
        ring.assign(one=1.0)
        .groupby("store_id")
        .rolling("24h", on="requested_at")["one"]
        .sum()
    )
    assert counts.max() >= 4  # many refund-only claims at one store within 24 hours
    assert (counts >= 3).sum() >= 10


def test_serial_refunders_claim_not_received_on_delivered(joined: pd.DataFrame) -> None:
    serial = joined[joined["abuse_pattern"] == "serial"]
    delivered_before = serial["delivered_at"] < serial["requested_at"]
    nr = serial["reason"] == "not_received"
    assert (nr & delivered_before).sum() > 10
    assert serial["store_id"].groupby(serial["buyer_id"]).nunique().max() >= 5  # many stores
    assert (serial["kind"] == "refund_only").mean() > 0.6
    opp = joined[joined["abuse_pattern"] == "opportunist"]
    assert len(opp) > 5


def test_honest_not_received_claims(joined: pd.DataFrame) -> None:
    honest_nr = joined[joined["is_abuse"].eq(False) & (joined["reason"] == "not_received")]
    never = honest_nr["delivered_at"].isna()
    late = honest_nr["delivered_at"] > honest_nr["requested_at"]
    marked = honest_nr["delivered_at"] < honest_nr["requested_at"]  # marked delivered, misdelivered
    assert never.sum() > 10 and late.sum() > 10 and marked.sum() > 10
    # features overlap: some legit claims are rejected, some abuse is refunded
    legit = joined[joined["is_abuse"].eq(False)]
    abuse = joined[joined["is_abuse"].eq(True)]
    assert (legit["outcome"] == "rejected").sum() > 0 and (abuse["outcome"] == "refunded").mean() > 0.5


# --------------------------------------------------------------------------- parquet
def test_parquet_round_trip_equals_memory(tables: dict[str, pd.DataFrame], written: Path) -> None:
    assert sorted(p.name for p in written.iterdir()) == ["orders", "refunds", "reviews", "service"]
    assert len(list((written / "orders").glob("part-*.parquet"))) == CFG.n_blocks
    back = {name: _read_parts(written / name) for name in tables}
    _assert_tables_equal(tables, back)


def test_chunking_does_not_change_data(tables: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    out = tmp_path / "one_chunk"
    counts = simulate_to_parquet(CFG, out, chunk_buyers=10 * CFG.n_buyers)
    assert counts == {name: len(df) for name, df in tables.items()}
    assert len(list((out / "orders").glob("*.parquet"))) == 1
    back = {name: _read_parts(out / name) for name in tables}
    _assert_tables_equal(tables, back)


def test_empty_existing_out_dir_is_accepted_and_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    counts = simulate_to_parquet(SimulationConfig(n_buyers=50, n_stores=5, days=10), out,
                                 progress=True)
    assert counts["orders"] > 0
    assert "simulate" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no temp folder left


def test_non_empty_out_dir_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="'out_dir'.*not empty"):
        simulate_to_parquet(SimulationConfig(n_buyers=10, n_stores=2, days=5), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    f = tmp_path / "keep.txt"
    with pytest.raises(ConfigError, match="not a folder"):
        simulate_to_parquet(SimulationConfig(n_buyers=10, n_stores=2, days=5), f)


def test_failed_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    def boom(cfg: SimulationConfig, raw: dict[str, np.ndarray]) -> pd.DataFrame:
        calls["n"] += 1
        raise OSError("disk full")

    monkeypatch.setattr(sim, "_service_frame", boom)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        simulate_to_parquet(SimulationConfig(n_buyers=100, n_stores=5, days=10), out)
    assert calls["n"] == 1
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_of_killed_run_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".out.tmp-999999999-deadbeef"  # no such process
    (stale / "orders").mkdir(parents=True)
    live = tmp_path / f".out.tmp-{os.getpid()}-cafe0000"  # a running process: kept
    live.mkdir()
    simulate_to_parquet(SimulationConfig(n_buyers=20, n_stores=2, days=5), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name])


def test_tables_validate_strict(tables: dict[str, pd.DataFrame], written: Path) -> None:
    from refundguard.tables import load_tables, validate

    clean, rejects = validate(tables, mode="strict")
    assert len(rejects) == 0
    for name in tables:  # already canonical: validation changes nothing
        pd.testing.assert_frame_equal(clean[name], tables[name], obj=name)
    loaded, rejects = validate(load_tables(written), mode="strict")
    assert len(rejects) == 0
    for name in tables:
        pd.testing.assert_frame_equal(loaded[name], tables[name], obj=name)


def test_cli_simulate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from refundguard.cli import main

    out = tmp_path / "simd"
    args = ["--out", str(out), "--buyers", "300", "--stores", "20", "--days", "20", "--seed", "1"]
    code = main(["--quiet", "simulate", *args])
    assert code == 0
    text = capsys.readouterr().out
    assert "orders" in text and "refunds" in text
    assert (out / "orders" / "part-00000.parquet").exists()
    assert main(["simulate", "--out", str(out), "--buyers", "300"]) == 2  # non-empty folder: bad argument


# --------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n_buyers": 0}, r"'n_buyers' parameter of SimulationConfig must be an int >= 1. Got 0 instead"),
        ({"n_stores": 2.5}, r"'n_stores'.*Got 2.5 instead"),
        ({"days": True}, r"'days'.*Got True instead"),
        ({"seed": -1}, r"'seed'.*int >= 0. Got -1"),
        ({"start": "not a date"}, r"'start'.*Got 'not a date'"),
        ({"start": "2024-06-01T00:00+02:00"}, r"'start'.*naive or UTC"),
        ({"share_serial": 1.5}, r"'share_serial'.*\[0.0, 1.0\]. Got 1.5"),
        ({"share_opportunist": 0.6, "share_ring": 0.6}, r"'share_ring'.*<= 1 \(the sum is 1.2"),
        ({"orders_per_buyer_day": 0}, r"'orders_per_buyer_day'.*\(0.0, 50.0\]"),
        ({"misdelivery_rate": float("nan")}, r"'misdelivery_rate'.*Got nan"),
        ({"ring_size_min": 2}, r"'ring_size_min'.*int >= 3"),
        ({"ring_size_min": 5, "ring_size_max": 4}, r"'ring_size_max'.*>= ring_size_min \(5\)"),
        ({"ring_burst_interval_days": 0.0}, r"'ring_burst_interval_days'.*\(0.0, 1000000.0\]. Got 0.0"),
    ],
)
def test_bad_config(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        SimulationConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.owner == "SimulationConfig"
    assert info.value.field in kwargs


def test_bad_overrides_and_chunks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Unknown SimulationConfig parameter\(s\) \['buyers'\]"):
        simulate(buyers=10)
    with pytest.raises(ConfigError, match="'config' parameter of simulate"):
        simulate({"n_buyers": 10})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'chunk_buyers'.*Got 0 instead"):
        simulate_to_parquet(SimulationConfig(n_buyers=10), tmp_path / "x", chunk_buyers=0)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- edge sizes
@settings()
@given(
    n_buyers=st.integers(1, 400),
    n_stores=st.integers(1, 30),
    days=st.integers(1, 40),
    seed=st.integers(0, 2**32),
    share_ring=st.sampled_from([0.0, 0.025, 0.5]),
)
def test_any_small_config_is_valid(n_buyers: int, n_stores: int, days: int, seed: int, share_ring: float) -> None:
    from refundguard.tables import validate

    cfg = SimulationConfig(n_buyers=n_buyers, n_stores=n_stores, days=days, seed=seed, share_ring=share_ring)
    t = simulate(cfg)
    for name, spec in DTYPES.items():
        assert {c: str(t[name][c].dtype) for c in spec} == spec, name
    validate(t, mode="strict")
    o, r = t["orders"], t["refunds"]
    assert o["paid_at"].between(cfg.start_ts, cfg.end_ts, inclusive="left").all()
    assert (r["requested_at"] < cfg.end_ts).all()
    assert (r["is_abuse"].isna() == r["resolved_at"].isna()).all()
