"""Online profile state for order services: ProfileStore backends and their snapshots (DESIGN.md section 4).

* :class:`ProfileStore` (``memory.py``): compact per-key state in process, fed by
  events, started from tables (``from_tables``, vectorised) or a snapshot (``load``);
* :class:`RedisProfileStore` (``redis_store.py``): the same interface on a Redis
  server shared by every replica of a service (needs the ``redis`` extra);
* ``snapshot.py``: a store's state as Parquet files plus a hashed ``MANIFEST``.

Private modules, one job each: ``_events.py`` (events checked like one row of
``validate``), ``_blocks.py`` (per-key state layouts), ``_ids.py`` (compact id
index), ``_tables.py`` (order and refund rows), ``_scores.py`` (the store score
rows read at the request day), ``_warm.py`` (vectorised warm start).
"""

from refundguard.online.memory import ProfileStore
from refundguard.online.redis_store import RedisProfileStore

__all__ = ["ProfileStore", "RedisProfileStore"]
