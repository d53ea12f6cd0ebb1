"""A second, independent marketplace generator for tests: not refundguard.simulate.

Different mechanics on purpose (plain per-buyer Poisson orders, one global
quality scale, abuse driven by a latent buyer propensity, account farms sharing a
few addresses and devices), written to the data contract as CSV-like text
columns so that training and scoring are shown to work on tables the simulator
did not make.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

START = pd.Timestamp("2024-05-01", tz="UTC")


def make_marketplace(n_buyers: int = 3_000, n_stores: int = 60, days: int = 200, seed: int = 11) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    store_quality = rng.beta(5, 2, n_stores)  # 1 = perfect
    store_cat = rng.choice(["garden", "kitchen", "music", "pets"], n_stores)
    propensity = rng.beta(0.4, 8.0, n_buyers)  # most buyers near 0
    farm = rng.random(n_buyers) < 0.04
    propensity[farm] = rng.uniform(0.5, 0.9, farm.sum())
    farm_id = np.where(farm, rng.integers(0, max(1, n_buyers // 150), n_buyers), -1)

    n_orders = rng.poisson(0.05 * days, n_buyers) + 1
    buyer = np.repeat(np.arange(n_buyers), n_orders)
    n = len(buyer)
    paid = pd.Series(START + pd.to_timedelta(rng.uniform(0, days * 86400, n), unit="s"))
    store = rng.integers(0, n_stores, n)
    amount = np.round(rng.gamma(2.0, 25.0, n) * (1 + 2 * farm[buyer]), 2)
    q = store_quality[store]
    ship_h = rng.exponential(10 + 60 * (1 - q))
    shipped = paid + pd.to_timedelta(ship_h * 3600, unit="s").to_numpy()
    deliver_h = rng.gamma(3.0, 15 + 20 * (1 - q))
    lost = rng.random(n) < 0.01 + 0.04 * (1 - q)
    delivered = (shipped + pd.to_timedelta(deliver_h * 3600, unit="s").to_numpy()).where(~lost)
    device = np.where(farm_id[buyer] >= 0, "fd" + farm_id[buyer].astype(str), "d" + buyer.astype(str))
    address = np.where(farm_id[buyer] >= 0, "fa" + farm_id[buyer].astype(str), "a" + buyer.astype(str))
    order_id = np.char.add("A", np.arange(n).astype(str))
    orders = pd.DataFrame(
        {
            "order_id": order_id,
            "buyer_id": np.char.add("U", buyer.astype(str)),
            "store_id": np.char.add("S", store.astype(str)),
            "category": store_cat[store],
            "amount": amount,
            "paid_at": paid,
            "shipped_at": shipped,
            "delivered_at": delivered,
            "device_id": device,
            "address_id": address,
        }
    )
    # refunds: honest ones from bad quality or lost parcels, abusive ones from propensity
    honest = (rng.random(n) < 0.03 + 0.25 * (1 - q)) | lost
    abusive = ~honest & (rng.random(n) < propensity[buyer] * 0.6)
    has = honest | abusive
    idx = np.flatnonzero(has)
    base = np.where(delivered.notna().to_numpy(), delivered.to_numpy(dtype="datetime64[ns]").astype("int64"),
                    shipped.to_numpy(dtype="datetime64[ns]").astype("int64"))[idx]
    delay = np.where(abusive[idx], rng.exponential(8, len(idx)), rng.exponential(60, len(idx))) * 3.6e12
    requested = pd.Series(pd.to_datetime(base + delay.astype("int64"), utc=True))
    reason = np.where(
        lost[idx],
        "not_received",
        np.where(abusive[idx], rng.choice(["not_received", "changed_mind", "damaged"], len(idx), p=[0.5, 0.2, 0.3]),
                 rng.choice(["quality", "damaged", "not_as_described", "wrong_item"], len(idx))),
    )
    kind = np.where(rng.random(len(idx)) < np.where(abusive[idx], 0.9, 0.5), "refund_only", "return_and_refund")
    resolved = requested + pd.to_timedelta(rng.exponential(30, len(idx)) * 3600, unit="s").to_numpy()
    open_ = (resolved > START + pd.Timedelta(days=days)).to_numpy()
    outcome = np.where(abusive[idx] & (rng.random(len(idx)) < 0.4), "rejected", "refunded")
    refunds = pd.DataFrame(
        {
            "refund_id": np.char.add("F", np.arange(len(idx)).astype(str)),
            "order_id": order_id[idx],
            "requested_at": requested,
            "kind": kind,
            "reason": reason,
            "amount": np.round(amount[idx] * rng.uniform(0.3, 1.0, len(idx)), 2).clip(0.01),
            "resolved_at": resolved.where(~open_),
            "outcome": pd.Series(outcome, dtype=object).where(~open_),
            "escalated": rng.random(len(idx)) < 0.05,
            "is_abuse": pd.Series(abusive[idx], dtype="boolean").where(~open_),
        }
    )
    got = delivered.notna().to_numpy() & (rng.random(n) < 0.3)
    ridx = np.flatnonzero(got)
    reviews = pd.DataFrame(
        {
            "order_id": order_id[ridx],
            "rating": np.clip(np.round(1 + 4 * q[ridx] + rng.normal(0, 0.7, len(ridx))), 1, 5).astype(int),
            "created_at": delivered.iloc[ridx].to_numpy() + pd.Timedelta(days=2),
        }
    )
    return {"orders": orders, "refunds": refunds, "reviews": reviews}
