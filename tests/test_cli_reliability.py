"""Issue 12, item 4: the command line refuses bad arguments (exit 2) before any work, checks its
outputs first, leaves no temporary file behind, and prints warnings as one clean line.

"Before any work" is shown by giving a data folder whose tables cannot be read: had the
command started its work, it would have failed on the data (exit 1), not on the arguments.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from refundguard.cli import main
from refundguard.guard import default_model_path
from refundguard.errors import RejectedRowsWarning
from refundguard.tables import load_tables, validate
from tests.test_tables import make_tables

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(default_model_path())


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sim") / "data"
    assert main(["simulate", "--out", str(folder), "--buyers", "300", "--stores", "15", "--days", "70",
                 "--seed", "5", "--quiet"]) == 0
    return folder


@pytest.fixture
def unreadable(tmp_path) -> Path:
    """A data folder whose tables cannot be read: any command that starts work on it exits 1."""
    folder = tmp_path / "unreadable"
    folder.mkdir()
    for name in ("orders", "refunds", "reviews"):
        (folder / f"{name}.parquet").write_bytes(b"not parquet at all")
    return folder


def _only_file_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder in which no file can be created (a read-only destination)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    # root ignores permission bits; sysfs refuses new files even to root
    folder = Path("/sys")
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        yield folder
        return
    os.close(fd)
    os.unlink(probe)
    pytest.skip("no unwritable folder available to this user")


def _one_error_line(capsys, *fragments: str) -> str:
    text = capsys.readouterr().err
    assert "Traceback" not in text
    err = [line for line in text.splitlines() if line.startswith("refundguard:")]  # after argparse's usage, if any
    assert len(err) == 1 and err[0].startswith("refundguard: error: "), text
    for f in fragments:
        assert f in err[0], (f, err[0])
    return err[0]


# --------------------------------------------------------------------------- case 7: dates
@pytest.mark.parametrize("period", [("2024-07-20", "2024-07-01"), ("2024-07-01", "2024-07-01")])
@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_case7_reversed_or_empty_periods_exit_2_before_any_work(command, period, unreadable, tmp_path, capsys):
    out = tmp_path / "out" / "scored.csv"
    argv = [command, "--data", str(unreadable), "--model", MODEL, "--from", period[0], "--to", period[1]]
    if command == "score":
        argv += ["--out", str(out)]
    assert main(argv) == 2
    _one_error_line(capsys, "--to", period[1], "must be after", "--from", period[0])
    assert not out.exists()


@pytest.mark.parametrize("word", ["now", "today", "01/06/2024", "yesterday", "2024-13-01", ""])
def test_case7_words_that_are_not_iso_dates_exit_2(word, simulated, tmp_path, capsys):
    out = tmp_path / "scored.csv"
    with pytest.raises(SystemExit) as info:
        main(["score", "--data", str(simulated), "--model", MODEL, "--out", str(out), "--from", word])
    assert info.value.code == 2
    _one_error_line(capsys, "not an ISO 8601 date", repr(word))
    assert not out.exists()


def test_iso_dates_and_instants_are_accepted(simulated, tmp_path, capsys):
    out = tmp_path / "scored.csv"
    assert main(["score", "--data", str(simulated), "--model", MODEL, "--out", str(out), "--quiet",
                 "--from", "2024-07-01", "--to", "2024-07-20T12:00:00+02:00"]) == 0
    scored = pd.read_csv(out)
    t = pd.to_datetime(scored["requested_at"], format="ISO8601", utc=True)
    assert len(scored) and t.min() >= pd.Timestamp("2024-07-01", tz="UTC")
    assert t.max() < pd.Timestamp("2024-07-20T10:00:00", tz="UTC")


# --------------------------------------------------------------------------- case 11: train arguments
@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--train-end", "2024-07-20", "--valid-end", "2024-07-10"], ["--valid-end 2024-07-10", "--train-end 2024-07-20"]),
        (["--train-end", "2024-07-20", "--valid-end", "2024-07-20"], ["--valid-end", "must be after"]),
        (["--train-end", "2024-07-01", "--valid-end", "2024-07-10", "--test-end", "2024-07-05"],
         ["--test-end 2024-07-05", "--valid-end 2024-07-10"]),
    ],
)
def test_case11_reversed_train_slice_ends_exit_2_before_any_work(extra, fragments, unreadable, tmp_path, capsys):
    assert main(["train", "--data", str(unreadable), *extra, "--out", str(tmp_path / "m")]) == 2
    _one_error_line(capsys, *fragments)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("gap", ["-3", "-1", "two"])
def test_case11_negative_gap_exits_2(gap, unreadable, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", str(unreadable), "--train-end", "2024-07-01", "--valid-end", "2024-07-10",
              "--gap-days", gap, "--out", str(tmp_path / "m")])
    assert info.value.code == 2
    _one_error_line(capsys, "--gap-days")


def test_store_scores_reversed_history_and_bad_window_exit_2(unreadable, capsys):
    assert main(["store-scores", "--data", str(unreadable), "--history", "2024-07-10", "2024-07-01"]) == 2
    _one_error_line(capsys, "--history", "on or after")
    with pytest.raises(SystemExit) as info:
        main(["store-scores", "--data", str(unreadable), "--as-of", "2024-07-10", "--window-days", "0"])
    assert info.value.code == 2
    _one_error_line(capsys, "--window-days")


# --------------------------------------------------------------------------- cases 9, 10: outputs
def test_case9_score_out_onto_a_folder_exits_2_before_any_work_and_leaves_nothing(unreadable, tmp_path, capsys):
    target = tmp_path / "dest" / "scored.csv"
    target.mkdir(parents=True)
    assert main(["score", "--data", str(unreadable), "--model", MODEL, "--out", str(target)]) == 2
    _one_error_line(capsys, "is a folder")
    assert _only_file_in(target.parent) == ["scored.csv"] and not any(target.iterdir())


_FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    from refundguard.cli import main
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG, like a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize("argv", [
    ["score", "--model", MODEL, "--out", "{dest}/scored.parquet"],
    ["score", "--model", MODEL, "--out", "{dest}/scored.csv"],
    ["store-scores", "--as-of", "2024-08-01", "--out", "{dest}/scores.csv"],
    ["validate", "--mode", "quarantine", "--rejects", "{dest}/rejects.csv"],
    ["evaluate", "--model", MODEL, "--out", "{dest}/m.json"],
    ["simulate", "--out", "{dest}/sim", "--buyers", "200", "--stores", "10", "--days", "30"],
])
def test_case9_a_full_disk_fails_with_one_line_and_leaves_no_temporary_file(argv, simulated, tmp_path):
    data = simulated
    if argv[0] == "validate":  # enough rejects to pass the size limit
        t = load_tables(simulated)
        t["orders"] = t["orders"].assign(paid_at="not a date")
        data = tmp_path / "bad"
        data.mkdir()
        for name, df in t.items():
            df.to_parquet(data / f"{name}.parquet")
    dest = tmp_path / "dest"
    args = [a.format(dest=dest) for a in argv] + ([] if argv[0] == "simulate" else ["--data", str(data)]) + ["--quiet"]
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("refundguard: error:")]
    assert len(errors) == 1 and "File too large" in errors[0] and "Traceback" not in proc.stderr
    assert _only_file_in(dest) == []  # neither the output nor a hidden .NAME.tmp-*


def test_case10_evaluate_out_creates_its_folder_like_score(simulated, tmp_path, capsys):
    target = tmp_path / "missing_dir" / "deeper" / "m.json"
    assert main(["evaluate", "--data", str(simulated), "--model", MODEL, "--out", str(target), "--quiet"]) == 0
    assert target.is_file() and "pr_auc" in target.read_text()
    assert f"metrics written to {target}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["validate", "--mode", "quarantine", "--rejects", "{dest}/rejects.csv"],
    ["store-scores", "--as-of", "2024-08-01", "--out", "{dest}/scores.csv"],
    ["evaluate", "--model", MODEL, "--out", "{dest}/m.json"],
    ["score", "--model", MODEL, "--out", "{dest}/scored.csv"],
    ["train", "--train-end", "2024-07-01", "--valid-end", "2024-07-20", "--out", "{dest}/model"],
    ["simulate", "--out", "{dest}/sim"],
    ["demo", "--out", "{dest}/demo"],
    ["score", "--model", MODEL, "--out", "{dest}/sub/scored.csv"],
])
def test_case10_a_read_only_destination_exits_2_before_any_work(argv, unwritable, unreadable, capsys):
    args = [a.format(dest=unwritable) for a in argv]
    if argv[0] not in ("simulate", "demo"):
        args += ["--data", str(unreadable)]
    assert main(args) == 2
    _one_error_line(capsys, str(unwritable))


# --------------------------------------------------------------------------- case 12: warnings
def test_case12_quarantine_warning_is_one_clean_line(tmp_path, capsys):
    t = make_tables(20)
    t["reviews"].loc[[2, 5], "rating"] = 9
    data = tmp_path / "d"
    data.mkdir()
    for name, df in t.items():
        df.to_csv(data / f"{name}.csv", index=False)
    before = warnings.showwarning
    assert main(["validate", "--data", str(data), "--mode", "quarantine"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["refundguard: warning: validate rejected 2 reviews rows; see the rejects table"]
    assert warnings.showwarning is before  # the caller's warning display is restored
    assert main(["--debug", "validate", "--data", str(data), "--mode", "quarantine"]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("refundguard: warning: validate rejected 2 reviews rows") and "RejectedRowsWarning" in line


def test_case12_in_a_real_process_stderr_holds_no_source_line(tmp_path):
    t = make_tables(20)
    t["reviews"].loc[[2, 5], "rating"] = 9
    data = tmp_path / "d"
    data.mkdir()
    for name, df in t.items():
        df.to_csv(data / f"{name}.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "refundguard.cli", "validate", "--data", str(data), "--mode",
                           "quarantine"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["refundguard: warning: validate rejected 2 reviews rows; see the rejects table"]


# --------------------------------------------------------------------------- case 4 at the command line
def test_case4_a_huge_amount_is_bad_data_not_a_silent_decision(simulated, tmp_path, capsys):
    t = load_tables(simulated)
    """``score`` validates in quarantine mode: the huge order and its refunds are set aside, never decided."""
    huge = t["refunds"]["order_id"].iloc[0]  # an order with a refund: the refund is set aside with it
    at = int(np.flatnonzero(t["orders"]["order_id"].to_numpy() == huge)[0])
    t["orders"].loc[t["orders"].index[at], "amount"] = 1e307
    padded_at = 11 if at != 11 else 12
    t["orders"].loc[t["orders"].index[padded_at], "device_id"] = "d1 "  # a padded id: id_whitespace, in the screens too
    data = tmp_path / "huge"
    data.mkdir()
    for name, df in t.items():
        df.to_parquet(data / f"{name}.parquet")
    out, rejects = tmp_path / "scored.csv", tmp_path / "rejects.csv"
    assert main(["score", "--data", str(data), "--model", MODEL, "--out", str(out), "--rejects", str(rejects),
                 "--quiet"]) == 0
    got = pd.read_csv(rejects)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RejectedRowsWarning)
        _, expected = validate(t, mode="quarantine")
    assert set(zip(got["table"], got["row_index"], got["rule"], strict=True)) == set(
        zip(expected["table"], expected["row_index"], expected["rule"], strict=True))
    assert ("orders", at, "range") in set(zip(got["table"], got["row_index"], got["rule"], strict=True))
    assert ("orders", padded_at, "id_whitespace") in set(zip(got["table"], got["row_index"], got["rule"], strict=True))
    scored = pd.read_csv(out)
    huge_refunds = set(t["refunds"].loc[t["refunds"]["order_id"] == huge, "refund_id"])
    assert huge_refunds and not huge_refunds & set(scored["refund_id"])
    text = capsys.readouterr().out
    n_in = len(t["refunds"])
    assert f"in = scored + rejected: {n_in:,} = {len(scored):,} + {n_in - len(scored):,} refunds" in text
