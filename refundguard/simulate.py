"""A seeded, vectorised marketplace simulator producing the four contract tables.

The simulated marketplace has stores of varied quality in each category and four
kinds of buyers:

* **honest** buyers, whose refunds are all legitimate: quality problems (more
  frequent at bad stores), items never shipped, parcels lost in transit, parcels
  marked delivered but misdelivered, "not received" claims on late deliveries,
  changed minds;
* **opportunists**, honest buyers who abuse now and then (refund-only claims on
  delivered orders);
* **serial refunders**, who buy pricier items from many stores and file
  refund-only claims on a large share of their orders, often "not received" on
  orders that were delivered, more often the higher the amount;
* **rings** of accounts that share devices and addresses and strike in bursts:
  every member orders from the same one or two stores in the days before a
  burst, then all claim refund-only within about 24 hours.

Legitimate and abusive claims overlap on purpose (honest "not received" claims
on parcels marked delivered or late, abuse behind excellent stores, rejected
legitimate claims, refunded abuse, honest buyers sharing devices and addresses
through households, public devices and pickup points, dormant rings), so the
detection problem is learnable but not trivial.

Determinism and chunking
------------------------
Buyers are simulated in fixed blocks of :data:`BLOCK_BUYERS` buyers and stores'
chat logs in fixed blocks of :data:`BLOCK_STORES` stores. Each block draws from
its own :class:`numpy.random.Generator`, seeded by
``SeedSequence(seed, spawn_key=(stream, block))``, so a block's rows depend only
on the configuration and the block number, never on how blocks are grouped into
output chunks. Ids are numbered block after block (within a block: orders by
``paid_at``, refunds by ``requested_at``). :func:`simulate` and
:func:`simulate_to_parquet` therefore produce the same rows in the same order:
reading the Parquet folders back (parts in file-name order) gives frames equal to
the in-memory ones.

Censoring: the simulated period ends at ``start + days``. Events after the end are
unknown: shipping and delivery times after the end are null, refunds and
reviews created after the end are absent, and a refund resolved after the end is
open (``resolved_at``, ``outcome``, ``is_abuse`` and ``abuse_pattern`` null;
``escalated`` true only if it was escalated before the end).

The refunds table carries two columns beyond the core contract: ``escalated_at``
(optional in the contract) and ``abuse_pattern`` (an extra column:
``"serial"``, ``"ring"``, ``"opportunist"`` or ``"none"``, null while open), the
simulator's ground truth for evaluating recall per abuse pattern. It is a label:
never use it as a feature.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from refundguard._time import NAT
from refundguard.errors import ConfigError
from refundguard.tables import KINDS, OUTCOMES, REASONS

__all__ = [
    "SimulationConfig",
    "simulate",
    "simulate_to_parquet",
    "CATEGORIES",
    "TABLE_NAMES",
    "BLOCK_BUYERS",
    "BLOCK_STORES",
]

#: Buyers per simulation block (fixed: part of the definition of the data).
BLOCK_BUYERS = 5_000
#: Stores per block of the service (chat) table.
BLOCK_STORES = 2_000
#: The tables produced, in this order.
TABLE_NAMES: tuple[str, ...] = ("orders", "refunds", "reviews", "service")

DAY = 86_400.0
HOUR = 3_600.0

# Category, share of stores, median amount, median transit hours, ship-by hours,
# base rate of quality refunds per delivered order, mean store quality offset.
_CATEGORY_TABLE: tuple[tuple[str, float, float, float, float, float, float], ...] = (
    ("apparel", 0.22, 32.0, 60.0, 48.0, 0.070, -0.10),
    ("electronics", 0.12, 160.0, 60.0, 48.0, 0.035, 0.10),
    ("beauty", 0.12, 24.0, 54.0, 48.0, 0.030, 0.20),
    ("home", 0.13, 45.0, 72.0, 72.0, 0.040, 0.00),
    ("food", 0.10, 16.0, 36.0, 24.0, 0.025, 0.10),
    ("sports", 0.09, 55.0, 66.0, 48.0, 0.040, 0.00),
    ("toys", 0.09, 28.0, 60.0, 48.0, 0.035, -0.10),
    ("books", 0.13, 18.0, 60.0, 48.0, 0.015, 0.30),
)
#: Category names used in ``orders.category``.
CATEGORIES: tuple[str, ...] = tuple(c[0] for c in _CATEGORY_TABLE)
_CAT_SHARE = np.array([c[1] for c in _CATEGORY_TABLE])
_CAT_SHARE = _CAT_SHARE / _CAT_SHARE.sum()
_CAT_AMOUNT = np.array([c[2] for c in _CATEGORY_TABLE])
_CAT_TRANSIT_H = np.array([c[3] for c in _CATEGORY_TABLE])
_CAT_SHIP_BY_H = np.array([c[4] for c in _CATEGORY_TABLE])
_CAT_QRATE = np.array([c[5] for c in _CATEGORY_TABLE])
_CAT_QOFFSET = np.array([c[6] for c in _CATEGORY_TABLE])

# buyer types
HONEST, OPPORTUNIST, SERIAL, RING = 0, 1, 2, 3
_PATTERN_NAMES = np.array(["none", "opportunist", "serial", "ring"], dtype=object)

# the contract's enums; the integer codes below index them
R_NOT_RECEIVED, R_QUALITY, R_NAD, R_DAMAGED, R_WRONG, R_CHANGED, R_OTHER = range(7)
K_REFUND_ONLY, K_RETURN = 0, 1
O_REFUNDED, O_REJECTED, O_WITHDRAWN = 0, 1, 2

_NS = 1_000_000_000

Arrays = dict[str, np.ndarray]


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated marketplace; same config, same tables.

    Parameters
    ----------
    n_buyers
        Number of buyers (>= 1).
    n_stores
        Number of stores (>= 1).
    days
        Length of the simulated period in days (>= 1).
    start
        First day (UTC), anything :class:`pandas.Timestamp` parses; the default
        period 2024-06-01 + 180 days spans the 2024-08-09 policy date.
    seed
        Random seed (int >= 0).
    orders_per_buyer_day
        Mean orders per honest buyer per active day (> 0). The defaults give
        about 20 orders per buyer over 180 days.
    share_opportunist, share_serial, share_ring
        Shares of buyers who are opportunists, serial refunders and ring members
        (each in [0, 1], sum <= 1); the rest are honest.
    opportunist_abuse_rate
        Probability that an opportunist abuses a delivered order, in [0, 1].
    serial_abuse_rate
        Probability that a serial refunder abuses a delivered order of median
        amount, in [0, 1] (higher for pricier orders).
    ring_size_min, ring_size_max
        Ring sizes are uniform in this range (3 <= min <= max).
    ring_burst_interval_days
        Mean days between two bursts of a ring (> 0); the number of bursts of a
        ring is Poisson(days / interval), so some rings stay dormant.
    misdelivery_rate
        Share of shipped parcels lost (never delivered) by the carrier, in
        [0, 0.5]; a further 80% of this rate is marked delivered but misdelivered.
    chats_per_order
        Mean chats (service table rows) per expected order of a store (>= 0).
    """

    n_buyers: int = 20_000
    n_stores: int = 500
    days: int = 180
    start: str | pd.Timestamp = "2024-06-01"
    seed: int = 0
    orders_per_buyer_day: float = 0.12
    share_opportunist: float = 0.08
    share_serial: float = 0.012
    share_ring: float = 0.02
    opportunist_abuse_rate: float = 0.018
    serial_abuse_rate: float = 0.35
    ring_size_min: int = 3
    ring_size_max: int = 10
    ring_burst_interval_days: float = 75.0
    misdelivery_rate: float = 0.012
    chats_per_order: float = 0.3

    def __post_init__(self) -> None:
        for name in ("n_buyers", "n_stores", "days", "ring_size_min", "ring_size_max"):
            _check_int(name, getattr(self, name), 1)
        _check_int("seed", self.seed, 0)
        if self.ring_size_min < 3:
            _fail("ring_size_min", "an int >= 3", self.ring_size_min)
        if self.ring_size_max < self.ring_size_min:
            _fail("ring_size_max", f"an int >= ring_size_min ({self.ring_size_min})", self.ring_size_max)
        for name in ("share_opportunist", "share_serial", "share_ring", "opportunist_abuse_rate", "serial_abuse_rate"):
            _check_float(name, getattr(self, name), 0.0, 1.0)
        _check_float("misdelivery_rate", self.misdelivery_rate, 0.0, 0.5)
        _check_float("orders_per_buyer_day", self.orders_per_buyer_day, 0.0, 50.0, low_open=True)
        _check_float("ring_burst_interval_days", self.ring_burst_interval_days, 0.0, 1e6, low_open=True)
        _check_float("chats_per_order", self.chats_per_order, 0.0, 100.0)
        total = self.share_opportunist + self.share_serial + self.share_ring
        if total > 1.0 + 1e-12:
            _fail("share_ring", "a float such that share_opportunist + share_serial + share_ring <= 1",
                  self.share_ring, extra=f" (the sum is {total!r})")
        if not isinstance(self.start, (str, pd.Timestamp)):
            _fail("start", "a date string or pandas.Timestamp", self.start)
        try:
            ts = pd.Timestamp(self.start)
        except (ValueError, TypeError):
            _fail("start", "a date string or pandas.Timestamp", self.start)
        if pd.isna(ts):
            _fail("start", "a date string or pandas.Timestamp", self.start)
        if ts.tzinfo is not None and ts.utcoffset() != pd.Timedelta(0):
            _fail("start", "a naive or UTC timestamp", self.start)

    @property
    def start_ts(self) -> pd.Timestamp:
        """The start as a UTC timestamp."""
        ts = pd.Timestamp(self.start)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")

    @property
    def end_ts(self) -> pd.Timestamp:
        """The end of the simulated period (exclusive), UTC."""
        return self.start_ts + pd.Timedelta(days=self.days)

    @property
    def n_blocks(self) -> int:
        """Number of buyer blocks."""
        return math.ceil(self.n_buyers / BLOCK_BUYERS)


def _fail(field: str, constraint: str, value: Any, extra: str = "") -> None:
    raise ConfigError.invalid("SimulationConfig", field, constraint, value, extra)


def _check_int(field: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        _fail(field, f"an int >= {low}", value)


def _check_float(field: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (v > low if low_open else v >= low) and v <= high
    if not ok:
        bracket = "(" if low_open else "["
        _fail(field, f"a float in {bracket}{low}, {high}]", value)


def _resolve_config(config: SimulationConfig | None, overrides: dict[str, Any]) -> SimulationConfig:
    if config is not None and not isinstance(config, SimulationConfig):
        raise ConfigError(
            "The 'config' parameter of simulate must be a SimulationConfig or None. "
            f"Got {type(config).__name__} instead.",
            owner="simulate",
            field="config",
            value=config,
        )
    names = {f.name for f in dataclasses.fields(SimulationConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"Unknown SimulationConfig parameter(s) {unknown}; valid ones are {sorted(names)}.",
            owner="SimulationConfig",
            field=unknown[0],
            value=overrides[unknown[0]],
        )
    if config is None:
        return SimulationConfig(**overrides)
    return dataclasses.replace(config, **overrides) if overrides else config


# --------------------------------------------------------------------------- helpers
def _rng(cfg: SimulationConfig, stream: int, block: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(stream, block)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _pick(rng: np.random.Generator, n: int, probs: np.ndarray) -> np.ndarray:
    """Draw ``n`` indices from a categorical distribution (vectorised)."""
    cum = np.cumsum(probs)
    cum /= cum[-1]
    return np.minimum(np.searchsorted(cum, rng.random(n), side="right"), len(probs) - 1)


def _segments(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For segments of ``sizes``: the segment of each element and its rank within it."""
    seg = np.repeat(np.arange(len(sizes)), sizes)
    starts = np.cumsum(sizes) - sizes
    return seg, np.arange(len(seg)) - starts[seg]


def _id_width(minimum: int, largest: int) -> int:
    return max(minimum, len(str(max(int(largest), 0))))


def _ids(prefix: str, nums: np.ndarray, width: int, mask: np.ndarray | None = None) -> pd.Series:
    """Zero-padded string ids ``prefix + nums`` as pandas ``str`` (null where ``mask``)."""
    arr = pa.array(np.asarray(nums, dtype=np.int64), mask=mask)
    s = pc.utf8_lpad(pc.cast(arr, pa.string()), width, "0")
    s = pc.binary_join_element_wise(prefix, s, "")
    return pd.Series(pd.array(s.cast(pa.large_string()), dtype="str"))


def _labels(names: tuple[str, ...] | np.ndarray, codes: np.ndarray, mask: np.ndarray | None = None) -> pd.Series:
    arr = pc.take(pa.array(list(names), type=pa.large_string()), pa.array(np.asarray(codes, dtype=np.int64), mask=mask))
    return pd.Series(pd.array(arr, dtype="str"))


def _ts(start_ns: int, seconds: np.ndarray) -> pd.Series:
    """Seconds after the start (NaN = null) as ``datetime64[ns, UTC]``, to the second."""
    sec = np.asarray(seconds, dtype=np.float64)
    null = np.isnan(sec)
    ns = np.where(null, 0, np.round(np.where(null, 0.0, sec))).astype(np.int64) * _NS + start_ns
    ns[null] = NAT
    return pd.Series(pd.DatetimeIndex(ns.view("M8[ns]")).tz_localize("UTC"))


# --------------------------------------------------------------------------- stores
@dataclass(frozen=True)
class _Stores:
    category: np.ndarray  # int codes
    q0: np.ndarray  # latent quality at the start
    slope: np.ndarray  # quality drift over the whole period
    price: np.ndarray  # price level multiplier
    pop: np.ndarray  # popularity weights (sum 1)
    lure: np.ndarray  # ring targeting weights (sum 1): quality-skewed
    expected_orders: np.ndarray  # expected orders per store over the period

    def bad(self, store: np.ndarray, t_frac: np.ndarray) -> np.ndarray:
        """Badness in (0, 1) of ``store`` at ``t_frac`` (0 = start, 1 = end)."""
        q = self.q0[store] + self.slope[store] * t_frac
        return _sigmoid(-(1.7 * q + 1.0))


def _make_stores(cfg: SimulationConfig) -> _Stores:
    rng = _rng(cfg, 0)
    n = cfg.n_stores
    cat = _pick(rng, n, _CAT_SHARE)
    q0 = rng.normal(_CAT_QOFFSET[cat] + 1.2, 1.0)
    slope = rng.normal(0.0, 0.35, n)
    price = rng.lognormal(0.0, 0.3, n)
    pop = rng.lognormal(0.0, 1.1, n)
    pop /= pop.sum()
    lure = np.exp(0.8 * q0) * np.sqrt(pop)
    lure /= lure.sum()
    total = cfg.n_buyers * cfg.orders_per_buyer_day * cfg.days * 0.85
    return _Stores(cat, q0, slope, price, pop, lure, pop * total)


# --------------------------------------------------------------------------- buyers
@dataclass(frozen=True)
class _Buyers:
    gid: np.ndarray  # global buyer number (0-based)
    kind: np.ndarray  # HONEST/OPPORTUNIST/SERIAL/RING
    rate: np.ndarray  # orders per active day
    active_from: np.ndarray  # day offset
    home_device: np.ndarray  # device code
    home_address: np.ndarray  # address code (global buyer number of the owner)
    ring_device: np.ndarray  # device code used for ring activity (-1 none)
    ring_address: np.ndarray  # address code used for ring activity (-1 none)
    second_device: np.ndarray  # device code or -1
    ring_of: np.ndarray  # local ring number or -1
    public_device: np.ndarray  # shared public device code or -1 (honest noise)
    pickup_address: np.ndarray  # shared pickup-point address code or -1 (honest noise)


@dataclass(frozen=True)
class _Rings:
    start: np.ndarray  # first member position in `members`
    size: np.ndarray
    members: np.ndarray  # local buyer indices, ring after ring


def _make_buyers(cfg: SimulationConfig, rng: np.random.Generator, lo: int, hi: int) -> tuple[_Buyers, _Rings]:
    m = hi - lo
    gid = np.arange(lo, hi, dtype=np.int64)
    cut = np.cumsum([cfg.share_opportunist, cfg.share_serial, cfg.share_ring])
    slot = np.searchsorted(cut, rng.random(m), side="right")  # 0 opportunist, 1 serial, 2 ring, 3 honest
    kind = np.array([OPPORTUNIST, SERIAL, RING, HONEST], dtype=np.int8)[slot]

    # rings: consecutive ring buyers of the block grouped into rings of random size
    ring_idx = np.flatnonzero(kind == RING)
    sizes_draw = rng.integers(cfg.ring_size_min, cfg.ring_size_max + 1, size=max(len(ring_idx), 1))
    ring_of = np.full(m, -1, dtype=np.int64)
    if len(ring_idx) < cfg.ring_size_min:
        kind[ring_idx] = HONEST
        ring_idx = ring_idx[:0]
    if len(ring_idx):
        ends = np.cumsum(sizes_draw)
        n_rings = int(np.searchsorted(ends, len(ring_idx), side="left")) + 1
        sizes = sizes_draw[:n_rings].copy()
        sizes[-1] = len(ring_idx) - (ends[n_rings - 2] if n_rings > 1 else 0)
        if sizes[-1] < cfg.ring_size_min and n_rings > 1:  # merge a short tail into the previous ring
            sizes[-2] += sizes[-1]
            sizes = sizes[:-1]
        seg, _ = _segments(sizes)
        ring_of[ring_idx] = seg
    else:
        sizes = np.zeros(0, dtype=np.int64)
    rings = _Rings(np.cumsum(sizes) - sizes, sizes, ring_idx)

    mean_rate = cfg.orders_per_buyer_day * np.array([1.0, 1.15, 0.8, 0.25])[kind]
    rate = rng.gamma(1.5, mean_rate / 1.5)
    new_share = np.array([0.25, 0.25, 0.5, 1.0])[kind]
    active_from = np.where(rng.random(m) < new_share, rng.random(m) * cfg.days * 0.8, 0.0)

    home_device = gid * 4
    home_address = gid.copy()
    household = (kind == HONEST) & (rng.random(m) < 0.08)
    household[0] = False
    home_address[household] = gid[np.flatnonzero(household) - 1]
    family_device = (kind == HONEST) & (rng.random(m) < 0.03)
    family_device[0] = False
    home_device[family_device] = home_device[np.flatnonzero(family_device) - 1]
    second_device = np.where((kind == SERIAL) & (rng.random(m) < 0.6), gid * 4 + 1, -1)
    second_device = np.where((kind == HONEST) & (rng.random(m) < 0.1), gid * 4 + 1, second_device)

    ring_device = np.full(m, -1, dtype=np.int64)
    ring_address = np.full(m, -1, dtype=np.int64)
    if len(ring_idx):
        n_r = len(sizes)
        n_dev = np.minimum(rng.integers(1, 4, n_r), sizes)
        n_addr = np.minimum(rng.integers(1, 3, n_r), sizes)
        seg, rank = _segments(sizes)
        owner_dev = ring_idx[rings.start[seg] + rank % n_dev[seg]]
        owner_addr = ring_idx[rings.start[seg] + rank % n_addr[seg]]
        ring_device[ring_idx] = gid[owner_dev] * 4 + 2
        ring_address[ring_idx] = gid[owner_addr]
    # honest noise: public devices (cafes, offices) and pickup points shared by unrelated buyers
    k = lo // BLOCK_BUYERS
    n_pub = max(1, m // 400)
    public_device = np.where((kind != RING) & (rng.random(m) < 0.012), (lo + rng.integers(0, n_pub, m)) * 4 + 3, -1)
    n_pick = max(1, m // 500)
    pickup_base = cfg.n_blocks * BLOCK_BUYERS + k * 100
    pickup_address = np.where((kind != RING) & (rng.random(m) < 0.02), pickup_base + rng.integers(0, n_pick, m), -1)
    buyers = _Buyers(gid, kind, rate, active_from, home_device, home_address, ring_device, ring_address,
                     second_device, ring_of, public_device, pickup_address)
    return buyers, rings


# --------------------------------------------------------------------------- one block
def _block(cfg: SimulationConfig, stores: _Stores, k: int) -> dict[str, Arrays]:
    """Simulate buyer block ``k``: numeric arrays, times in seconds after the start.

    The stages draw from one generator in a fixed order: buyers, ring bursts,
    regular orders, order details, claims, refunds, reviews.
    """
    lo, hi = k * BLOCK_BUYERS, min((k + 1) * BLOCK_BUYERS, cfg.n_buyers)
    rng = _rng(cfg, 1, k)
    buyers, rings = _make_buyers(cfg, rng, lo, hi)
    bursts, active_from = _ring_bursts(cfg, stores, rng, buyers, rings)
    o = _orders(cfg, stores, rng, buyers, active_from, bursts)
    c = _claims(cfg, rng, o)
    refunds = _refunds(cfg, rng, o, c)
    reviews = _reviews(cfg, rng, o, c)
    end = cfg.days * DAY
    shipped = np.where(o["shipped"] < end, o["shipped"], np.nan)  # censor logistics at the end
    delivered = np.where((o["delivered"] < end) & ~np.isnan(shipped), o["delivered"], np.nan)
    orders = {
        "buyer": buyers.gid[o["buyer"]], "store": o["store"], "category": o["cat"], "amount": o["amount"],
        "paid": o["paid"], "ship_by": o["ship_by"], "shipped": shipped, "delivered": delivered,
        "device": o["device"], "device_null": o["device_null"], "address": o["address"],
        "address_null": o["address_null"],
    }
    return {"orders": orders, "refunds": refunds, "reviews": reviews}


def _ring_bursts(
    cfg: SimulationConfig, stores: _Stores, rng: np.random.Generator, buyers: _Buyers, rings: _Rings
) -> tuple[Arrays, np.ndarray]:
    """Burst orders of the block's rings and every buyer's first active day.

    Each ring strikes Poisson(days / interval) times; at a burst every member
    orders 1-3 times from one of two target stores (chosen with a preference for
    good stores) in the 1-6 days before, then claims within 24 hours.
    """
    days = float(cfg.days)
    n_r = len(rings.size)
    nb = np.minimum(rng.poisson(days / cfg.ring_burst_interval_days, n_r), 12)
    b_ring = np.repeat(np.arange(n_r), nb)
    b_lo = min(7.0, 0.3 * days)
    b_time = (b_lo + rng.random(len(b_ring)) * (days - b_lo)) * DAY
    b_targets = _pick(rng, 2 * len(b_ring), stores.lure).reshape(-1, 2) if len(b_ring) else np.zeros((0, 2), np.int64)
    first_burst = np.full(n_r, np.inf)
    np.minimum.at(first_burst, b_ring, b_time)
    mb_burst, mb_rank = _segments(rings.size[b_ring])
    mb_buyer = rings.members[rings.start[b_ring[mb_burst]] + mb_rank]
    mb_n = 1 + rng.binomial(2, 0.35, len(mb_burst))
    bo_mb, _ = _segments(mb_n)
    bo_burst = mb_burst[bo_mb]
    n_bo = len(bo_mb)
    paid = np.maximum(b_time[bo_burst] - (1.0 + 5.0 * rng.random(n_bo)) * DAY, 0.0)
    store = b_targets[bo_burst, (rng.random(n_bo) < 0.4).astype(np.int64)] if n_bo else np.zeros(0, np.int64)
    claim = b_time[bo_burst] + rng.random(n_bo) * 24 * HOUR

    # ring members become active some days before their ring's first burst; dormant rings as drawn
    active_from = buyers.active_from.copy()
    members = np.flatnonzero(buyers.ring_of >= 0)
    members = members[np.isfinite(first_burst[buyers.ring_of[members]])]
    if len(members):
        fb = first_burst[buyers.ring_of[members]] / DAY
        active_from[members] = np.clip(fb - 6.0 - 20.0 * rng.random(len(members)), 0.0, days - 1.0)
    return {"buyer": mb_buyer[bo_mb], "store": store, "paid": paid, "claim": claim}, active_from


def _orders(
    cfg: SimulationConfig,
    stores: _Stores,
    rng: np.random.Generator,
    buyers: _Buyers,
    active_from: np.ndarray,
    bursts: Arrays,
) -> Arrays:
    """All orders of the block, sorted by ``paid``, with amounts, devices and true logistics."""
    days = float(cfg.days)
    span = np.maximum(days - active_from, 0.0)
    n_ord = rng.poisson(buyers.rate * span)
    ro_buyer, _ = _segments(n_ord)
    ro_paid = (active_from[ro_buyer] + rng.random(len(ro_buyer)) * span[ro_buyer]) * DAY
    ro_store = _pick(rng, len(ro_buyer), stores.pop)
    spread = (buyers.kind[ro_buyer] == SERIAL) & (rng.random(len(ro_buyer)) < 0.6)  # serial: many stores
    ro_store[spread] = rng.integers(0, cfg.n_stores, int(spread.sum()))

    buyer = np.concatenate([ro_buyer, bursts["buyer"]])
    store = np.concatenate([ro_store, bursts["store"]]).astype(np.int64)
    paid = np.floor(np.concatenate([ro_paid, bursts["paid"]]))
    burst = np.concatenate([np.zeros(len(ro_buyer), bool), np.ones(len(bursts["buyer"]), bool)])
    claim_at = np.concatenate([np.full(len(ro_buyer), np.nan), bursts["claim"]])
    order = np.lexsort((buyer, paid))
    buyer, store, paid, burst, claim_at = buyer[order], store[order], paid[order], burst[order], claim_at[order]
    n = len(buyer)
    kind = buyers.kind[buyer]
    cat = stores.category[store]
    bad = stores.bad(store, paid / (days * DAY))

    amt_mult = np.where(kind == SERIAL, 1.4, 1.0) * np.where(burst, 1.6, 1.0)
    amount = _CAT_AMOUNT[cat] * stores.price[store] * amt_mult * rng.lognormal(0.0, 0.7, n)
    amount = np.maximum(np.round(amount, 2), 1.0)
    o = {
        "buyer": buyer, "store": store, "paid": paid, "burst": burst, "claim_at": claim_at, "kind": kind,
        "cat": cat, "bad": bad, "amount": amount,
        "rel_amount": amount / (_CAT_AMOUNT[cat] * stores.price[store]),
    }
    o.update(_devices(rng, buyers, buyer, burst))
    o.update(_logistics(cfg, rng, paid, cat, bad))
    return o


def _devices(rng: np.random.Generator, buyers: _Buyers, buyer: np.ndarray, burst: np.ndarray) -> Arrays:
    """Device and address codes per order: own, second, public, pickup point or the ring's."""
    n = len(buyer)
    u_dev = rng.random(n)
    device = buyers.home_device[buyer].copy()
    sec = buyers.second_device[buyer]
    use_sec = (sec >= 0) & (u_dev < 0.4)
    device[use_sec] = sec[use_sec]
    pub = buyers.public_device[buyer]
    use_pub = (pub >= 0) & (u_dev > 0.65)
    device[use_pub] = pub[use_pub]
    rdev = buyers.ring_device[buyer]
    use_ring = (rdev >= 0) & (rng.random(n) < np.where(burst, 0.92, 0.5))
    device[use_ring] = rdev[use_ring]
    device_null = rng.random(n) < 0.03
    address = buyers.home_address[buyer].copy()
    pick = buyers.pickup_address[buyer]
    use_pick = (pick >= 0) & (rng.random(n) < 0.7)
    address[use_pick] = pick[use_pick]
    raddr = buyers.ring_address[buyer]
    use_raddr = (raddr >= 0) & (rng.random(n) < np.where(burst, 0.85, 0.5))
    address[use_raddr] = raddr[use_raddr]
    address_null = rng.random(n) < 0.01
    return {"device": device, "device_null": device_null, "address": address, "address_null": address_null}


def _logistics(
    cfg: SimulationConfig, rng: np.random.Generator, paid: np.ndarray, cat: np.ndarray, bad: np.ndarray
) -> Arrays:
    """True shipping and delivery times (not yet censored at the end) and parcel fates."""
    n = len(paid)
    ship_by = paid + _CAT_SHIP_BY_H[cat] * HOUR
    never_ship = rng.random(n) < 0.004 + 0.03 * bad
    ship_delay = rng.lognormal(np.log(3.0 + 80.0 * bad), 0.75) * HOUR
    shipped = np.where(never_ship, np.nan, np.floor(paid + ship_delay) + 1.0)
    transit = _CAT_TRANSIT_H[cat] * (0.65 + 1.0 * bad) * rng.lognormal(0.0, 0.45, n) * HOUR
    u_lost = rng.random(n)
    lost = ~never_ship & (u_lost < cfg.misdelivery_rate * (0.6 + 1.2 * bad))
    misdelivered = ~never_ship & ~lost & (u_lost > 1.0 - 0.8 * cfg.misdelivery_rate)  # marked delivered
    delivered = np.where(lost | never_ship, np.nan, np.floor(shipped + transit) + 1.0)
    return {
        "ship_by": ship_by, "never_ship": never_ship, "shipped": shipped, "transit": transit, "lost": lost,
        "misdelivered": misdelivered, "delivered": delivered,
        "late_delivery": transit > 2.0 * _CAT_TRANSIT_H[cat] * HOUR,
        "received": ~np.isnan(delivered) & ~misdelivered,
    }


def _claims(cfg: SimulationConfig, rng: np.random.Generator, o: Arrays) -> Arrays:
    """The primary claim of each order (at most one): legit first, then abuse overrides."""
    n = len(o["paid"])
    received, delivered, shipped, cat, bad = o["received"], o["delivered"], o["shipped"], o["cat"], o["bad"]
    want = np.zeros(n, bool)
    reason = np.zeros(n, np.int8)
    kindr = np.full(n, K_REFUND_ONLY, np.int8)
    req = np.full(n, np.nan)
    frac = np.ones(n)
    abuse = np.zeros(n, bool)
    u = rng.random((8, n))

    # legit: quality problems on received orders, more at bad stores
    q = received & (u[0] < _CAT_QRATE[cat] * (0.05 + 2.6 * bad))
    want |= q
    q_reasons = np.array([R_QUALITY, R_NAD, R_DAMAGED, R_WRONG], np.int8)
    reason[q] = q_reasons[_pick(rng, int(q.sum()), np.array([0.35, 0.3, 0.2, 0.15]))]
    ro_q = q & (u[1] < np.where(o["amount"] < 30.0, 0.7, 0.45))
    kindr[q] = K_RETURN
    kindr[ro_q] = K_REFUND_ONLY
    partial = ro_q & (u[2] < 0.6)
    frac[partial] = 0.2 + 0.6 * u[3][partial]
    req[q] = delivered[q] + (0.2 + rng.exponential(3.0, int(q.sum()))) * DAY
    # changed mind / other
    cm = received & ~want & (u[4] < 0.02)
    want |= cm
    reason[cm], kindr[cm] = R_CHANGED, K_RETURN
    req[cm] = delivered[cm] + (0.5 + 5.5 * u[5][cm]) * DAY
    ot = ~np.isnan(shipped) & ~want & (u[4] > 0.996)
    want |= ot
    reason[ot] = R_OTHER
    kindr[ot] = np.where(u[1][ot] < 0.5, K_REFUND_ONLY, K_RETURN)
    req[ot] = o["paid"][ot] + (1.0 + 9.0 * u[5][ot]) * DAY
    # not received, honestly: late parcels (claimed while in transit), lost, misdelivered, never shipped
    lt = o["late_delivery"] & received & ~want & (u[6] < 0.15)
    want |= lt
    reason[lt], kindr[lt] = R_NOT_RECEIVED, K_REFUND_ONLY
    req[lt] = shipped[lt] + o["transit"][lt] * (0.55 + 0.4 * u[5][lt])
    ls = o["lost"] & (u[6] < 0.85)
    want[ls], reason[ls], kindr[ls], frac[ls] = True, R_NOT_RECEIVED, K_REFUND_ONLY, 1.0
    req[ls] = shipped[ls] + (5.0 + 9.0 * u[5][ls]) * DAY
    md = o["misdelivered"] & (u[6] < 0.85)
    want[md], reason[md], kindr[md], frac[md] = True, R_NOT_RECEIVED, K_REFUND_ONLY, 1.0
    req[md] = delivered[md] + (0.3 + 3.7 * u[5][md]) * DAY
    ns_ = o["never_ship"] & (u[6] < 0.85)
    want[ns_], kindr[ns_], frac[ns_] = True, K_REFUND_ONLY, 1.0
    reason[ns_] = np.where(u[7][ns_] < 0.6, R_NOT_RECEIVED, R_OTHER)
    req[ns_] = o["ship_by"][ns_] + (1.0 + 7.0 * u[5][ns_]) * DAY

    # abuse on received orders: serial refunders (more on pricier orders), opportunists, ring members
    kind, burst = o["kind"], o["burst"]
    p_ab = np.select(
        [kind == SERIAL, kind == OPPORTUNIST, kind == RING],
        [cfg.serial_abuse_rate * np.clip(o["rel_amount"] ** 0.5, 0.4, 2.2), np.full(n, cfg.opportunist_abuse_rate),
         np.full(n, cfg.opportunist_abuse_rate)],
        0.0,
    )
    ab = ~burst & received & (rng.random(n) < p_ab)
    n_ab = int(ab.sum())
    is_serial = kind[ab] == SERIAL
    ab_reason_p = np.where(is_serial[:, None], [0.5, 0.2, 0.15, 0.1, 0.05], [0.25, 0.3, 0.2, 0.15, 0.1])
    ab_u = rng.random(n_ab)
    ab_reason = (ab_u[:, None] > np.cumsum(ab_reason_p, axis=1)[:, :4]).sum(axis=1)
    want[ab], abuse[ab] = True, True
    reason[ab] = np.array([R_NOT_RECEIVED, R_QUALITY, R_NAD, R_DAMAGED, R_WRONG], np.int8)[ab_reason]
    kindr[ab] = np.where(rng.random(n_ab) < np.where(is_serial, 0.8, 0.6), K_REFUND_ONLY, K_RETURN)
    frac[ab] = np.where(rng.random(n_ab) < 0.8, 1.0, 0.4 + 0.5 * rng.random(n_ab))
    req[ab] = delivered[ab] + (0.2 + rng.exponential(2.5, n_ab)) * DAY
    # ring bursts: mostly refund-only, within ~24h of the burst start
    bc = burst & (rng.random(n) < 0.92)
    n_bc = int(bc.sum())
    want[bc], abuse[bc] = True, True
    bc_reasons = np.array([R_NOT_RECEIVED, R_DAMAGED, R_QUALITY], np.int8)
    reason[bc] = bc_reasons[_pick(rng, n_bc, np.array([0.45, 0.25, 0.3]))]
    kindr[bc] = np.where(rng.random(n_bc) < 0.9, K_REFUND_ONLY, K_RETURN)
    frac[bc] = 1.0
    req[bc] = np.maximum(o["claim_at"][bc], o["paid"][bc] + HOUR)
    pattern = np.where(abuse, kind, 0).astype(np.int8)
    return {"want": want, "reason": reason, "kind": kindr, "requested": np.floor(req), "frac": frac,
            "abuse": abuse, "pattern": pattern}


def _refunds(cfg: SimulationConfig, rng: np.random.Generator, o: Arrays, c: Arrays) -> Arrays:
    """Refund rows (primary claims plus follow-ups on some partial legit refunds), resolved and censored."""
    end = cfg.days * DAY
    amount, req, frac, abuse = o["amount"], c["requested"], c["frac"], c["abuse"]
    prim = np.flatnonzero(c["want"] & (req < end))
    amt1 = np.where(frac[prim] >= 1.0, amount[prim], np.floor(amount[prim] * frac[prim] * 100.0) / 100.0)
    amt1 = np.maximum(amt1, 0.01)
    follow = (frac[prim] < 1.0) & ~abuse[prim] & (rng.random(len(prim)) < 0.2)
    rest = np.floor((amount[prim] - amt1) * (0.3 + 0.7 * rng.random(len(prim))) * 100.0) / 100.0
    follow &= rest >= 0.01
    req2 = np.floor(req[prim] + (1.0 + 9.0 * rng.random(len(prim))) * DAY)
    follow &= req2 < end
    f_idx = np.flatnonzero(follow)
    r_order = np.concatenate([prim, prim[f_idx]])
    r_req = np.concatenate([req[prim], req2[f_idx]])
    r_amount = np.concatenate([amt1, rest[f_idx]])
    r_kind = np.concatenate([c["kind"][prim], np.full(len(f_idx), K_RETURN, np.int8)])
    r_abuse = abuse[r_order]
    nr = len(r_order)
    r_bad = o["bad"][r_order]

    # resolution: slower at bad stores and for returns; rejections and escalations
    handle = rng.lognormal(np.log(0.8 + 80.0 * r_bad**1.3), 0.9) * HOUR
    handle = handle + np.where(r_kind == K_RETURN, (0.3 + 1.5 * rng.random(nr)) * (0.5 + 2.0 * r_bad) * DAY, 0.0)
    u_out = rng.random(nr)
    p_rej = np.where(r_abuse, 0.15 + 0.35 * r_bad, 0.03 + 0.2 * r_bad)
    p_wd = np.where(r_abuse, 0.04, 0.05)
    outcome = np.where(u_out < p_rej, O_REJECTED, np.where(u_out < p_rej + p_wd, O_WITHDRAWN, O_REFUNDED))
    outcome = outcome.astype(np.int8)
    p_esc = 0.004 + 0.08 * r_bad + 0.25 * (outcome == O_REJECTED) + 0.05 * r_abuse
    esc = rng.random(nr) < p_esc
    esc_at = np.where(esc, np.floor(r_req + handle * (0.5 + 0.5 * rng.random(nr))), np.nan)
    resolved = np.floor(r_req + handle + np.where(esc, (2.0 + 4.0 * rng.random(nr)) * DAY, 0.0)) + 1.0
    # censoring at the end of the period
    open_ = resolved >= end
    resolved[open_] = np.nan
    esc_known = esc & (esc_at < end)
    esc_at[~esc_known] = np.nan
    ro = np.lexsort((np.arange(nr), r_req))
    return {
        "order": r_order[ro], "requested": r_req[ro], "kind": r_kind[ro], "reason": c["reason"][r_order][ro],
        "amount": r_amount[ro], "resolved": resolved[ro], "outcome": outcome[ro], "open": open_[ro],
        "escalated": esc_known[ro], "escalated_at": esc_at[ro], "abuse": r_abuse[ro],
        "pattern": c["pattern"][r_order][ro],
    }


def _reviews(cfg: SimulationConfig, rng: np.random.Generator, o: Arrays, c: Arrays) -> Arrays:
    """Reviews of received orders: worse at bad stores, after late shipping or delivery, after problems."""
    end = cfg.days * DAY
    abuse, reason, bad = c["abuse"], c["reason"], o["bad"]
    legit_claim = c["want"] & ~abuse
    p_rev = np.where(abuse, 0.1, np.where(legit_claim, 0.4, 0.3))
    ri = np.flatnonzero(o["received"] & (rng.random(len(abuse)) < p_rev))
    late_ship = o["shipped"] > o["ship_by"]
    mu = (4.95 - 2.4 * bad[ri] - 0.8 * o["late_delivery"][ri] - 0.6 * late_ship[ri]
          - 1.8 * (legit_claim[ri] & (reason[ri] >= R_QUALITY) & (reason[ri] <= R_WRONG)) - 1.0 * abuse[ri])
    rating = np.clip(np.round(mu + rng.normal(0.0, 0.6, len(ri))), 1, 5).astype(np.int64)
    created = np.floor(o["delivered"][ri] + (600.0 + rng.exponential(2.5 * DAY, len(ri))))
    keep = created < end
    ri, rating, created = ri[keep], rating[keep], created[keep]
    vo = np.lexsort((ri, created))
    return {"order": ri[vo], "rating": rating[vo], "created": created[vo]}


def _service_block(cfg: SimulationConfig, stores: _Stores, j: int) -> dict[str, np.ndarray]:
    lo, hi = j * BLOCK_STORES, min((j + 1) * BLOCK_STORES, cfg.n_stores)
    rng = _rng(cfg, 3, j)
    idx = np.arange(lo, hi)
    n_chat = rng.poisson(stores.expected_orders[idx] * cfg.chats_per_order)
    seg, _ = _segments(n_chat)
    store = idx[seg]
    started = np.floor(rng.random(len(store)) * cfg.days * DAY)
    bad = stores.bad(store, started / (cfg.days * DAY))
    resp = np.round(rng.lognormal(np.log(20.0 + 500.0 * bad ** 1.5), 1.0), 1)
    o = np.lexsort((store, started))
    return {"store": store[o], "started": started[o], "first_response_s": resp[o]}


# --------------------------------------------------------------------------- assembly
@dataclass
class _Counter:
    orders: int = 0
    refunds: int = 0


def _widths(cfg: SimulationConfig) -> dict[str, int]:
    expected = cfg.n_buyers * cfg.orders_per_buyer_day * cfg.days
    return {
        "order": _id_width(8, 10 * expected),
        "buyer": _id_width(6, cfg.n_buyers),
        "store": _id_width(4, cfg.n_stores),
        "device": _id_width(7, 4 * cfg.n_buyers),
        "address": _id_width(7, cfg.n_blocks * BLOCK_BUYERS + cfg.n_blocks * 100),
    }


def _frames(cfg: SimulationConfig, raw: dict[str, dict[str, np.ndarray]], counter: _Counter) -> dict[str, pd.DataFrame]:
    """Turn one block's arrays into the canonical DataFrames, numbering ids from ``counter``."""
    w = _widths(cfg)
    s0 = int(cfg.start_ts.value)
    o, r, v = raw["orders"], raw["refunds"], raw["reviews"]
    n_o = len(o["paid"])
    order_no = counter.orders + 1 + np.arange(n_o)
    oid = _ids("o", order_no, w["order"])
    orders = pd.DataFrame(
        {
            "order_id": oid,
            "buyer_id": _ids("b", o["buyer"] + 1, w["buyer"]),
            "store_id": _ids("s", o["store"] + 1, w["store"]),
            "category": _labels(CATEGORIES, o["category"]),
            "amount": o["amount"].astype(np.float64),
            "paid_at": _ts(s0, o["paid"]),
            "ship_by": _ts(s0, o["ship_by"]),
            "shipped_at": _ts(s0, o["shipped"]),
            "delivered_at": _ts(s0, o["delivered"]),
            "device_id": _ids("d", o["device"], w["device"], mask=o["device_null"]),
            "address_id": _ids("a", o["address"], w["address"], mask=o["address_null"]),
        }
    )
    n_r = len(r["requested"])
    open_ = r["open"]
    abuse = pd.array(r["abuse"], dtype="boolean")
    abuse[open_] = pd.NA
    refunds = pd.DataFrame(
        {
            "refund_id": _ids("r", counter.refunds + 1 + np.arange(n_r), w["order"]),
            "order_id": _ids("o", order_no[r["order"]], w["order"]),
            "requested_at": _ts(s0, r["requested"]),
            "kind": _labels(KINDS, r["kind"]),
            "reason": _labels(REASONS, r["reason"]),
            "amount": r["amount"].astype(np.float64),
            "resolved_at": _ts(s0, r["resolved"]),
            "outcome": _labels(OUTCOMES, r["outcome"], mask=open_),
            "escalated": r["escalated"].astype(bool),
            "is_abuse": pd.Series(abuse),
            "escalated_at": _ts(s0, r["escalated_at"]),
            "abuse_pattern": _labels(tuple(_PATTERN_NAMES), r["pattern"], mask=open_),
        }
    )
    reviews = pd.DataFrame(
        {
            "order_id": _ids("o", order_no[v["order"]], w["order"]),
            "rating": v["rating"].astype(np.int64),
            "created_at": _ts(s0, v["created"]),
        }
    )
    counter.orders += n_o
    counter.refunds += n_r
    return {"orders": orders, "refunds": refunds, "reviews": reviews}


def _service_frame(cfg: SimulationConfig, raw: dict[str, np.ndarray]) -> pd.DataFrame:
    w = _widths(cfg)
    return pd.DataFrame(
        {
            "store_id": _ids("s", raw["store"] + 1, w["store"]),
            "started_at": _ts(int(cfg.start_ts.value), raw["started"]),
            "first_response_s": raw["first_response_s"].astype(np.float64),
        }
    )


def _iter_blocks(cfg: SimulationConfig, stores: _Stores) -> Iterator[dict[str, pd.DataFrame]]:
    counter = _Counter()
    for k in range(cfg.n_blocks):
        yield _frames(cfg, _block(cfg, stores, k), counter)


def _iter_service(cfg: SimulationConfig, stores: _Stores) -> Iterator[pd.DataFrame]:
    for j in range(math.ceil(cfg.n_stores / BLOCK_STORES)):
        yield _service_frame(cfg, _service_block(cfg, stores, j))


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)


# --------------------------------------------------------------------------- public API
def simulate(config: SimulationConfig | None = None, **overrides: Any) -> dict[str, pd.DataFrame]:
    """Simulate a marketplace in memory.

    Parameters
    ----------
    config
        The configuration; ``None`` means the defaults.
    **overrides
        Fields of :class:`SimulationConfig` replacing those of ``config``
        (e.g. ``simulate(n_buyers=1000, seed=3)``).

    Returns
    -------
    dict of str to pandas.DataFrame
        ``orders``, ``refunds``, ``reviews`` and ``service`` in the canonical
        dtypes of the data contract (ids ``str``, timestamps
        ``datetime64[ns, UTC]``, ``is_abuse`` nullable ``boolean``). Refunds also
        carry ``escalated_at`` and the extra label column ``abuse_pattern``.

    Raises
    ------
    ConfigError
        An invalid or unknown configuration value.

    Examples
    --------
    >>> tables = simulate(n_buyers=500, n_stores=20, days=30, seed=1)
    >>> sorted(tables)
    ['orders', 'refunds', 'reviews', 'service']
    """
    cfg = _resolve_config(config, overrides)
    stores = _make_stores(cfg)
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLE_NAMES}
    for frames in _iter_blocks(cfg, stores):
        for name, df in frames.items():
            parts[name].append(df)
    parts["service"] = list(_iter_service(cfg, stores))
    return {name: _concat(parts[name]) for name in TABLE_NAMES}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists (another user) or cannot tell: keep
    return True


def _remove_stale_temps(out: Path) -> None:
    """Remove temp folders of earlier runs for ``out`` whose process is gone (killed runs)."""
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        parts = p.name.rsplit(".tmp-", 1)[-1].split("-")
        if p.is_dir() and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            shutil.rmtree(p, ignore_errors=True)


def simulate_to_parquet(
    config: SimulationConfig | None,
    out_dir: str | os.PathLike[str],
    *,
    chunk_buyers: int | None = None,
    progress: bool = False,
) -> dict[str, int]:
    """Simulate a marketplace chunk by chunk into partitioned Parquet folders.

    Writes ``out_dir/orders/``, ``out_dir/refunds/``, ``out_dir/reviews/`` and
    ``out_dir/service/``, each a folder of ``part-XXXXX.parquet`` files. Only one
    chunk is in memory at a time, so memory does not grow with the number of
    buyers. The output is written to a temporary folder next to ``out_dir``
    (``.<name>.tmp-<pid>-<random>``) and renamed at the end: a failed or killed
    run leaves no partial ``out_dir``. A failed run removes its temporary folder;
    a killed one cannot, and the next run for the same ``out_dir`` removes it
    (when its process is gone).

    Reading each folder back with its parts in file-name order gives exactly
    the tables of :func:`simulate` for the same configuration, whatever
    ``chunk_buyers`` is.

    Parameters
    ----------
    config
        The configuration; ``None`` means the defaults.
    out_dir
        Output folder; it must not exist or be empty.
    chunk_buyers
        Buyers per written chunk, rounded up to a multiple of
        :data:`BLOCK_BUYERS` (default: one block, about 100k orders with the
        default rates).
    progress
        Show a tqdm progress bar (on stderr).

    Returns
    -------
    dict of str to int
        Rows written per table.

    Raises
    ------
    ConfigError
        An invalid configuration, ``chunk_buyers`` < 1, or ``out_dir`` exists and
        is not an empty folder.
    """
    cfg = _resolve_config(config, {})
    if chunk_buyers is not None:
        if isinstance(chunk_buyers, bool) or not isinstance(chunk_buyers, (int, np.integer)) or chunk_buyers < 1:
            raise ConfigError(
                f"The 'chunk_buyers' parameter of simulate_to_parquet must be an int >= 1 or None. "
                f"Got {chunk_buyers!r} instead.",
                owner="simulate_to_parquet",
                field="chunk_buyers",
                value=chunk_buyers,
            )
    per_chunk = 1 if chunk_buyers is None else math.ceil(int(chunk_buyers) / BLOCK_BUYERS)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"The 'out_dir' parameter of simulate_to_parquet must be an empty or absent folder. "
            f"Got {str(out)!r}, which {'is not a folder' if not out.is_dir() else 'is not empty'}.",
            owner="simulate_to_parquet",
            field="out_dir",
            value=str(out),
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    from tqdm.auto import tqdm

    stores = _make_stores(cfg)
    n_service = math.ceil(cfg.n_stores / BLOCK_STORES)
    counts = dict.fromkeys(TABLE_NAMES, 0)
    try:
        for name in TABLE_NAMES:
            (tmp / name).mkdir(parents=True)
        with tqdm(total=cfg.n_blocks + n_service, desc="simulate", unit="block", disable=not progress) as bar:
            buffer: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLE_NAMES[:3]}
            part = 0
            for k, frames in enumerate(_iter_blocks(cfg, stores)):
                for name, df in frames.items():
                    buffer[name].append(df)
                bar.update(1)
                if (k + 1) % per_chunk == 0 or k + 1 == cfg.n_blocks:
                    for name, dfs in buffer.items():
                        df = _concat(dfs)
                        df.to_parquet(tmp / name / f"part-{part:05d}.parquet", index=False)
                        counts[name] += len(df)
                        dfs.clear()
                    part += 1
            for j, df in enumerate(_iter_service(cfg, stores)):
                df.to_parquet(tmp / "service" / f"part-{j:05d}.parquet", index=False)
                counts["service"] += len(df)
                bar.update(1)
        if out.exists():
            out.rmdir()  # empty (checked above); fails loudly if something appeared meanwhile
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts
