"""Where the bytes of uploaded models live, so that every service process (and replica) reads the same ones.

Two kinds, chosen by LATPRED_MODEL_STORE:

- "database" (the default): in the store, beside the model's row and written in its transaction (a failed upload
  leaves neither); every process that reaches the database reads them;
- a directory path: a file per model in a directory every replica mounts (a shared volume), written atomically.

Files that earlier versions wrote under LATPRED_HOME/models are still read: the database kind copies such a file
into the store the first time it reads it.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session

from predictor.errors import LatpredError
from predictor.store import has_model_blob, read_model_blob, save_model_blob
from service.api.uploads import write_atomically
from service.settings import Settings

__all__ = ["DatabaseModelStore", "DirectoryModelStore", "ModelNotFoundError", "ModelStore", "open_model_store"]

logger = logging.getLogger(__name__)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ModelNotFoundError(LatpredError, LookupError):
    """No uploaded model with that id (or its bytes are gone)."""


def _checked(model_id: str) -> str:
    """The id, if it is a sha256 hex digest (the only thing a model's bytes are ever named by)."""
    if not _SHA256_HEX.fullmatch(model_id):
        raise ModelNotFoundError(f"unknown model id {model_id!r}: ids are sha256 hex digests")
    return model_id


class ModelStore(Protocol):
    """Keeps and returns the bytes of uploaded models by their id."""

    def read(self, session: Session, model_id: str) -> bytes | None:
        """The model's bytes, None when none are kept."""

    def has(self, session: Session, model_id: str) -> bool:
        """Whether the model's bytes are kept."""

    def write(self, session: Session, model_id: str, data: bytes) -> None:
        """Keep the bytes; with the session's commit for the database kind, at once for a directory."""

    def discard(self, model_id: str) -> None:
        """Forget bytes written for an upload whose row was not committed (a directory's file)."""


class DatabaseModelStore:
    """Bytes in the store's model_blobs table; files an earlier version left under `legacy_dir` are read too."""

    def __init__(self, legacy_dir: Path | None = None) -> None:
        self.legacy_dir = legacy_dir

    def _legacy_path(self, model_id: str) -> Path | None:
        return None if self.legacy_dir is None else self.legacy_dir / f"{_checked(model_id)}.onnx"

    def read(self, session: Session, model_id: str) -> bytes | None:
        data = read_model_blob(session, _checked(model_id))
        if data is not None:
            return data
        path = self._legacy_path(model_id)
        if path is None or not path.is_file():
            return None
        data = path.read_bytes()
        # Kept in the store from now on, where the other processes read it.
        self.write(session, model_id, data)
        session.commit()
        logger.info("copied the file of model %s into the store", model_id[:12])
        return data

    def has(self, session: Session, model_id: str) -> bool:
        path = self._legacy_path(model_id)
        return has_model_blob(session, _checked(model_id)) or (path is not None and path.is_file())

    def write(self, session: Session, model_id: str, data: bytes) -> None:
        save_model_blob(session, _checked(model_id), data)

    def discard(self, model_id: str) -> None:
        """Nothing to do: the bytes go with the transaction."""


class DirectoryModelStore:
    """A file per model in a directory shared by every replica."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, model_id: str) -> Path:
        return self.directory / f"{_checked(model_id)}.onnx"

    def read(self, session: Session, model_id: str) -> bytes | None:
        try:
            return self.path(model_id).read_bytes()
        except FileNotFoundError:
            return None

    def has(self, session: Session, model_id: str) -> bool:
        return self.path(model_id).is_file()

    def write(self, session: Session, model_id: str, data: bytes) -> None:
        path = self.path(model_id)
        if not path.is_file():
            write_atomically(path, data)

    def discard(self, model_id: str) -> None:
        self.path(model_id).unlink(missing_ok=True)


def open_model_store(settings: Settings) -> ModelStore:
    """The model store the settings name (LATPRED_MODEL_STORE)."""
    if settings.model_store == "database":
        return DatabaseModelStore(legacy_dir=settings.models_dir)
    return DirectoryModelStore(Path(settings.model_store).expanduser().resolve())
