"""Where the store is: the only place in predictor/ that reads LATPRED_* environment variables."""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["StoreSettings", "default_home"]


def default_home() -> Path:
    """latpred's data directory when LATPRED_HOME is unset: `$XDG_DATA_HOME/latpred`, else
    `~/.local/share/latpred` (never the current directory: commands run from anywhere find one store)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says a relative value is invalid and is to be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "latpred"


class StoreSettings(BaseSettings):
    """The store's location: `LATPRED_DATABASE_URL`, else a SQLite file under `LATPRED_HOME`."""

    model_config = SettingsConfigDict(env_prefix="LATPRED_", extra="ignore")

    home: Path = Field(default_factory=default_home,
                       description="data directory (SQLite file, uploaded models); default $XDG_DATA_HOME/latpred, "
                                   "else ~/.local/share/latpred")
    database_url: str = Field(default="", description="SQLAlchemy URL; default: a SQLite file under home")

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL of the store: `database_url`, else `sqlite:///<home>/latpred.db` (absolute)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'latpred.db').resolve()}"

    @property
    def models_dir(self) -> Path:
        """Where model files were kept before the store held their bytes (read and moved in)."""
        return self.home / "models"
