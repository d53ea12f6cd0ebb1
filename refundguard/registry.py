"""A model registry on disk: versions side by side, a ``current`` pointer, a promotion log.

Layout of a registry folder::

    REGISTRY/
      REGISTRY             marker: "refundguard model registry 1"
      versions/<model_version>/   one verified model folder per version (model.txt, meta.json,
                                  README.md, MANIFEST), never changed once written
      current              the serving version's name (one line), replaced atomically
      log.jsonl            one JSON line per event: register, promote, keep, rollback

Like the MLflow model registry's ``@champion`` alias, ``current`` names the version
:meth:`refundguard.guard.RefundGuard.load` serves when given the registry folder;
``rollback`` moves it back to the version it replaced, so a promotion followed by a
rollback serves the first model again, byte for byte (its folder never changed).
Each promotion is logged with both models' test metrics.

The pointer is written to a temporary file and renamed over ``current``: a reader
sees the old or the new name, never a partial one. Version folders are written by
:func:`refundguard.artifacts.save_model` (atomic) and verified on every load.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from refundguard._io import atomic_write_text, temporary_name
from refundguard.artifacts import MANIFEST, load_model
from refundguard.errors import ConfigError, ModelError

__all__ = ["ModelRegistry", "RegistryEvent", "is_registry", "resolve_model_path"]

_MARKER = "REGISTRY"
_MARKER_TEXT = "refundguard model registry 1\n"
_CURRENT = "current"
_LOG = "log.jsonl"
_VERSIONS = "versions"


def is_registry(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a model registry folder (it holds the ``REGISTRY`` marker)."""
    return (Path(path) / _MARKER).is_file()


@dataclass(frozen=True)
class RegistryEvent:
    """One line of the registry log.

    Attributes
    ----------
    at
        When (UTC, ISO 8601).
    event
        ``register``, ``promote``, ``keep`` (a challenger that did not beat the current
        model) or ``rollback``.
    version
        The version the event is about (the new ``current`` for promote and rollback).
    previous
        The ``current`` version before the event (``None`` when there was none).
    detail
        Metrics and the rule behind the event (``metric``, ``challenger``, ``champion``).
    """

    at: str
    event: str
    version: str
    previous: str | None
    detail: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"at": self.at, "event": self.event, "version": self.version, "previous": self.previous,
                "detail": dict(self.detail)}


class ModelRegistry:
    """Model versions side by side with a ``current`` pointer and a log (see the module docstring).

    Parameters
    ----------
    path
        The registry folder; created (empty) when absent.

    Raises
    ------
    ModelError
        ``path`` exists and is neither a registry nor an empty folder.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ModelError(f"{self.path} exists and is not a folder; it cannot be a model registry.",
                             path=str(self.path), problem="not_a_registry")
        if self.path.is_dir() and not is_registry(self.path):
            if (self.path / MANIFEST).is_file():
                raise ModelError(
                    f"{self.path} is a model folder, not a model registry. Give a new folder for the registry "
                    "(and register this model into it with ModelRegistry(new).register(...)).",
                    path=str(self.path), problem="not_a_registry")
            if any(self.path.iterdir()):
                raise ModelError(f"{self.path} is a non-empty folder that is not a model registry.",
                                 path=str(self.path), problem="not_a_registry")
        (self.path / _VERSIONS).mkdir(parents=True, exist_ok=True)
        if not is_registry(self.path):
            atomic_write_text(self.path / _MARKER, _MARKER_TEXT)

    # ------------------------------------------------------------------ reading
    def versions(self) -> list[str]:
        """The registered versions, oldest registration first."""
        seen: list[str] = []
        for event in self.history():
            if event.event == "register" and event.version not in seen:
                seen.append(event.version)
        return seen

    def current(self) -> str | None:
        """The serving version (``None`` before the first promotion)."""
        pointer = self.path / _CURRENT
        if not pointer.is_file():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        if not name or name not in self.versions():
            raise ModelError(f"The registry pointer {pointer} names {name!r}, which is not a registered version.",
                             path=str(pointer), problem="registry_pointer")
        return name

    def version_path(self, version: str) -> Path:
        """The folder of a registered ``version``."""
        if version not in self.versions():
            raise ConfigError.invalid("ModelRegistry", "version", f"one of {self.versions()}", version)
        return self.path / _VERSIONS / version

    def current_path(self) -> Path:
        """The folder of the serving version.

        Raises
        ------
        ModelError
            Nothing has been promoted yet.
        """
        name = self.current()
        if name is None:
            raise ModelError(f"The model registry {self.path} has no current version yet: promote one first.",
                             path=str(self.path), problem="registry_empty")
        return self.path / _VERSIONS / name

    def history(self) -> list[RegistryEvent]:
        """Every logged event, oldest first."""
        log = self.path / _LOG
        if not log.is_file():
            return []
        out = []
        for n, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                out.append(RegistryEvent(d["at"], d["event"], d["version"], d.get("previous"), d.get("detail") or {}))
            except (ValueError, KeyError, TypeError) as exc:
                raise ModelError(f"{log} line {n} is not a registry event: {exc}.", path=str(log),
                                 problem="registry_log") from None
        return out

    # ------------------------------------------------------------------ writing
    def register(self, trained: Any) -> str:
        """Write a trained model (anything with ``.save(path)``, e.g. ``TrainedModel``) as a new version.

        Returns
        -------
        str
            Its version (the artifact's ``model_version``). Registering the same
            artifact again changes nothing and returns the same version.
        """
        staging = temporary_name(self.path / _VERSIONS / "new")
        try:
            saved = trained.save(staging)
            target = self.path / _VERSIONS / saved.model_version
            if target.exists():
                load_model(target)  # the same artifact is registered already; its copy must still verify
            else:
                os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if saved.model_version not in self.versions():
            self._log("register", saved.model_version, self.current(), {"manifest_sha256": saved.manifest_sha256})
        return saved.model_version

    def promote(self, version: str, detail: Mapping[str, Any] | None = None) -> None:
        """Make ``version`` the serving one (the pointer is switched atomically) and log it."""
        load_model(self.version_path(version))  # verified before it can serve
        previous = self.current()
        atomic_write_text(self.path / _CURRENT, version + "\n")
        self._log("promote", version, previous, dict(detail or {}))

    def keep(self, version: str, detail: Mapping[str, Any] | None = None) -> None:
        """Log that the challenger ``version`` did not replace the current model."""
        self._log("keep", version, self.current(), dict(detail or {}))

    def rollback(self) -> str:
        """Serve again the version the current one replaced when it was promoted; returns it.

        Rolling back twice walks further back the promotion chain (it does not undo
        the first rollback: promote the version again for that).

        Raises
        ------
        ModelError
            There is no earlier version to go back to.
        """
        current = self.current()
        previous = None
        for event in reversed(self.history()):
            if event.event == "promote" and event.version == current:
                previous = event.previous  # the version this one replaced when it was promoted
                break
        if current is None or previous is None:
            raise ModelError(f"The model registry {self.path} has no earlier version to roll back to.",
                             path=str(self.path), problem="registry_no_previous")
        load_model(self.version_path(previous))
        atomic_write_text(self.path / _CURRENT, previous + "\n")
        self._log("rollback", previous, current, {})
        return previous

    def _log(self, event: str, version: str, previous: str | None, detail: Mapping[str, Any]) -> None:
        line = RegistryEvent(datetime.now(timezone.utc).isoformat(timespec="seconds"), event, version, previous,
                             detail).to_dict()
        with open(self.path / _LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, sort_keys=True, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def resolve_model_path(path: str | os.PathLike[str]) -> Path:
    """A model folder, or the current version's folder when ``path`` is a registry."""
    p = Path(path)
    return ModelRegistry(p).current_path() if is_registry(p) else p

