"""Tuning's worth (issue 10): test PR-AUC of ``train(tune=0)`` against ``train(tune=N)``.

    python benchmarks/tune_value.py          # N = 6 candidates
    python benchmarks/tune_value.py 12

Same time split for both, on the simulator and on ``tests/alt_marketplace.py``. The search
reads only the validation slice (``tests/test_retraining.py`` poisons the test labels to
prove it), so the test PR-AUC printed here is an honest measure of what ``--tune`` buys.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.alt_marketplace
import refundguard as rg  # noqa: E402
from refundguard.training import train  # noqa: E402
from tests.alt_marketplace import make_marketplace  # noqa: E402


def main(n: int) -> None:
    sets = {
        "simulator seed 1": (rg.simulate(n_buyers=20_000, n_stores=400, days=180, seed=1),
                             "2024-09-15", "2024-10-20", "2024-11-28"),
        "alt marketplace seed 1": (make_marketplace(n_buyers=8_000, n_stores=120, seed=1),
                                   "2024-09-01", "2024-10-01", "2024-11-17"),
    }
    for name, (tables, train_end, valid_end, test_end) in sets.items():
        for tune in (0, n):
            t0 = time.perf_counter()
            m = train(tables, train_end, valid_end, test_end, tune=tune)
            print(f"{name:24s} tune={tune:<3d} test PR-AUC {m.metrics['test']['pr_auc']:.4f}  "
                  f"valid {m.metrics['valid']['pr_auc']:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
