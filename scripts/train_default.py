"""Train the bundled default model (models/default) on simulated data.

    python scripts/train_default.py [--out models/default]

Deterministic: the same command on the same library versions writes the same
model.txt (the simulator is seeded, LightGBM runs with a fixed seed and
deterministic=True, and the training date is fixed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from refundguard.simulate import SimulationConfig, simulate
from refundguard.training import train

#: Everything that defines the default model; the model card repeats it.
SIMULATION = SimulationConfig(n_buyers=30_000, n_stores=400, days=180, start="2024-06-01", seed=2024)
TRAIN_END = "2024-09-15"
VALID_END = "2024-10-20"
TEST_END = "2024-11-28"
TRAINED_AT = "2024-11-28"
COMMAND = "python scripts/train_default.py"


def build(out: Path) -> None:
    """Simulate, train and write the default model to ``out``."""
    tables = simulate(SIMULATION)
    model = train(
        tables,
        TRAIN_END,
        VALID_END,
        TEST_END,
        trained_at=TRAINED_AT,
        command=f"{COMMAND}  # simulate({SIMULATION})",
    )
    saved = model.save(out)
    print(f"default model {saved.model_version} written to {out}")
    for name, metrics in model.metrics.items():
        print(f"  {name}: PR-AUC {metrics['pr_auc']:.4f}, ROC-AUC {metrics['roc_auc']:.4f}, "
              f"recall@0.90 {metrics['recall_at_precision']:.4f}, ECE {metrics['ece']:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "models" / "default")
    args = parser.parse_args(argv)
    build(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
