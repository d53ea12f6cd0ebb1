"""ProfileStore snapshots: the whole state as Parquet files plus a hashed MANIFEST (no pickle).

A snapshot is a folder::

    meta.json        format version, score configuration, expiry floor, counts
    orders.parquet   order ids and their numeric columns
    refunds.parquet  refund ids and their numeric columns
    buyers.parquet   one row per buyer: name, block (list of int64, see online._blocks); the
                     list column's values are the store's shared buffer, written and read as is
    stores.parquet, devices.parquet, addresses.parquet   the same per key kind
    pending.parquet  resolutions held for refunds not seen yet
    scores.parquet   the store score rows
    MANIFEST         "<sha256>  <file>" per other file, sorted by name

:func:`load_snapshot` checks, before parsing anything, that ``MANIFEST`` lists
exactly the files present and that every hash matches (and, with
``expected_sha256``, that ``MANIFEST`` itself has that hash, which pins the whole
snapshot). :func:`save_snapshot` writes a hidden temporary folder and renames it
into place, so a reader sees the old snapshot or the new one, never a part.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from refundguard._io import temporary_name
from refundguard._time import NAT
from refundguard.config import ScoreConfig
from refundguard.errors import DataError
from refundguard.online._events import Resolution
from refundguard.online._tables import ORDER_COLUMNS, REFUND_COLUMNS

__all__ = ["FORMAT_VERSION", "SNAPSHOT_FILES", "save_snapshot", "load_snapshot", "snapshot_sha256"]

FORMAT_VERSION = 1
MANIFEST = "MANIFEST"
_KEY_FILES = ("buyers", "stores", "devices", "addresses")
SNAPSHOT_FILES: tuple[str, ...] = ("meta.json", "orders.parquet", "refunds.parquet",
                                   *(f"{k}.parquet" for k in _KEY_FILES), "pending.parquet", "scores.parquet")
_LINE = re.compile(r"^([0-9a-f]{64})  ([A-Za-z0-9_.-]+)$")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a snapshot's ``MANIFEST`` (what ``expected_sha256`` pins)."""
    return _sha256_file(Path(path) / MANIFEST)


def _keys_table(keys: Any) -> pa.Table:
    values, offsets = keys.flat()
    block = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
    return pa.table({"name": pa.array(keys.names, type=pa.large_string()), "block": block})


def _rows_table(cols: Any, id_name: str, spec: dict[str, Any]) -> pa.Table:
    data = {id_name: cols.ids.arrow()}
    for name in spec:
        data[name] = pa.array(cols.column(name))
    return pa.table(data)


def save_snapshot(store: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``store``'s state to the folder ``path`` (replaced atomically if it is a snapshot).

    Returns
    -------
    pathlib.Path
        The folder written.

    Raises
    ------
    DataError
        ``path`` is a file, or a non-empty folder that is not a snapshot.
    """
    target = Path(path)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST).is_file())):
        raise DataError(f"{target} exists and is not a ProfileStore snapshot; refusing to replace it.",
                        detail={"path": str(target)})
    with store._lock:
        meta = {
            "format_version": FORMAT_VERSION,
            "score_config": None if store.score_config is None else store.score_config.to_dict(),
            "floor": None if store._floor == NAT else store._floor,
            "newest": None if store._newest == NAT else store._newest,
            "horizon_ns": store._horizon,
            "dropped_resolutions": store._dropped_resolutions,
            "ignored_events": store._ignored,
            "orders": store._orders.n,
            "refunds": store._refunds.n,
        }
        tables = {
            "orders.parquet": _rows_table(store._orders, "order_id", ORDER_COLUMNS),
            "refunds.parquet": _rows_table(store._refunds, "refund_id", REFUND_COLUMNS),
            "buyers.parquet": _keys_table(store._buyers),
            "stores.parquet": _keys_table(store._stores),
            "devices.parquet": _keys_table(store._links[0]),
            "addresses.parquet": _keys_table(store._links[1]),
            "pending.parquet": pa.table({
                "refund_id": pa.array([r.refund_id for r in store._pending.values()], type=pa.large_string()),
                "resolved": pa.array([r.resolved for r in store._pending.values()], type=pa.int64()),
                "outcome": pa.array([r.outcome for r in store._pending.values()], type=pa.large_string()),
                "is_abuse": pa.array([r.is_abuse for r in store._pending.values()], type=pa.bool_()),
            }),
            "scores.parquet": pa.Table.from_pandas(store._scores.frame, preserve_index=False),
        }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    old = None
    try:
        tmp.mkdir()
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        for name, table in tables.items():
            pq.write_table(table, tmp / name, compression="lz4")
        manifest = "".join(f"{_sha256_file(tmp / name)}  {name}\n" for name in sorted(SNAPSHOT_FILES))
        (tmp / MANIFEST).write_text(manifest, encoding="ascii")
        if target.exists():
            old = temporary_name(target)
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return target


def _verify(folder: Path, expected_sha256: str | None) -> None:
    def bad(problem: str, msg: str) -> DataError:
        return DataError(f"ProfileStore snapshot {folder}: {msg}", detail={"path": str(folder), "problem": problem})

    if not folder.is_dir():
        raise bad("missing_folder", "no such folder.")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise bad("missing_manifest", "no MANIFEST.")
    if expected_sha256 is not None and _sha256_file(manifest) != expected_sha256.lower():
        raise bad("hash_mismatch", "MANIFEST does not have the expected sha256.")
    listed: dict[str, str] = {}
    for line in manifest.read_text(encoding="ascii", errors="replace").splitlines():
        m = _LINE.match(line)
        if m is None or m.group(2) in listed:
            raise bad("manifest", f"malformed MANIFEST line {line[:80]!r}.")
        listed[m.group(2)] = m.group(1)
    present = {p.name for p in folder.iterdir()} - {MANIFEST}
    if set(listed) != set(SNAPSHOT_FILES) or present != set(SNAPSHOT_FILES):
        raise bad("files", f"files {sorted(present)} / MANIFEST {sorted(listed)}; expected {sorted(SNAPSHOT_FILES)}.")
    for name, digest in listed.items():
        f = folder / name
        if f.is_symlink() or not f.is_file():
            raise bad("files", f"{name} is not a regular file.")
        if _sha256_file(f) != digest:
            raise bad("hash_mismatch", f"{name} does not match its MANIFEST hash.")


def load_snapshot(store_class: Any, path: str | os.PathLike[str], *, expected_sha256: str | None = None) -> Any:
    """Read a snapshot into a new ``store_class`` (a ProfileStore), verified before parsing.

    Raises
    ------
    DataError
        The folder, a file or a hash is missing or wrong, or the format version is unknown.
    """
    folder = Path(path)
    _verify(folder, expected_sha256)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"ProfileStore snapshot {folder}: format version {meta.get('format_version')!r}, "
                        f"this refundguard reads {FORMAT_VERSION}.", detail={"problem": "format_version"})
    cfg = None if meta["score_config"] is None else ScoreConfig.from_dict(meta["score_config"])
    horizon = meta["horizon_ns"]
    store = store_class(score_config=cfg)
    store._horizon = horizon
    store._floor = NAT if meta["floor"] is None else int(meta["floor"])
    store._newest = NAT if meta["newest"] is None else int(meta["newest"])
    store._dropped_resolutions = int(meta["dropped_resolutions"])
    store._ignored = int(meta.get("ignored_events", 0))
    store._rows_floor = store._floor
    for file, cols, id_name, spec in (("orders.parquet", store._orders, "order_id", ORDER_COLUMNS),
                                      ("refunds.parquet", store._refunds, "refund_id", REFUND_COLUMNS)):
        t = pq.read_table(folder / file)
        cols.set_all(t.column(id_name), {name: t.column(name).to_numpy() for name in spec})
    for file, keys in zip(_KEY_FILES, (store._buyers, store._stores, *store._links), strict=True):
        t = pq.read_table(folder / f"{file}.parquet")
        block = t.column("block").combine_chunks()
        offsets = block.offsets.to_numpy()
        values = block.values.to_numpy()[offsets[0]:offsets[-1]]  # one buffer: sliced per key, no object per key
        keys.set_base(t.column("name").to_pylist(), values, offsets - offsets[0])
    p = pq.read_table(folder / "pending.parquet").to_pylist()
    store._pending = {r["refund_id"]: Resolution(r["refund_id"], int(r["resolved"]), r["outcome"], r["is_abuse"])
                      for r in p}
    frame = pq.read_table(folder / "scores.parquet").to_pandas()
    frame["category"] = frame["category"].astype("str")
    frame["store_id"] = frame["store_id"].astype("str")
    store._scores.set_frame(frame)
    store._index_members()  # the cluster search's key -> buyers index is derived from the buyer blocks
    return store


__all__ += ["MANIFEST"]
