"""StoreSettings: where the store is, from LATPRED_* variables, else the XDG data directory (never ./var)."""
from __future__ import annotations

from pathlib import Path

import pytest

from predictor.settings import StoreSettings
from predictor.store import open_store
from service.settings import Settings


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No LATPRED_* or XDG variable set; HOME in a temporary folder."""
    for name in ("LATPRED_HOME", "LATPRED_DATABASE_URL", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return tmp_path / "user"


def test_default_home_is_the_users_data_directory(bare_environment: Path) -> None:
    settings = StoreSettings()
    assert settings.home == bare_environment / ".local" / "share" / "latpred"
    assert settings.resolved_database_url == f"sqlite:///{bare_environment / '.local/share/latpred/latpred.db'}"
    assert settings.models_dir == settings.home / "models"


def test_xdg_data_home_is_followed_when_absolute(bare_environment: Path, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert StoreSettings().home == tmp_path / "xdg" / "latpred"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")  # invalid by the XDG spec: ignored
    assert StoreSettings().home == bare_environment / ".local" / "share" / "latpred"


def test_latpred_variables_win(bare_environment: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LATPRED_HOME", str(tmp_path / "home"))
    assert StoreSettings().home == tmp_path / "home"
    assert StoreSettings().resolved_database_url == f"sqlite:///{tmp_path / 'home' / 'latpred.db'}"
    monkeypatch.setenv("LATPRED_DATABASE_URL", "postgresql+psycopg://db/latpred")
    assert StoreSettings().resolved_database_url == "postgresql+psycopg://db/latpred"
    # The service's settings are the store's plus its own.
    service = Settings()
    assert (service.home, service.resolved_database_url) == (tmp_path / "home", "postgresql+psycopg://db/latpred")


def test_open_store_makes_the_home_and_migrates(bare_environment: Path, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    store = open_store(StoreSettings())
    try:
        assert (tmp_path / "xdg" / "latpred" / "latpred.db").is_file()
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM devices").scalar() == 0
    finally:
        store.close()
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing left in the working directory (it was ./var)
