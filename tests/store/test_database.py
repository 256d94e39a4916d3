"""Engines, migrations and session handling of the store on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, make_url, select, text

from predictor.errors import LatpredError, StoreError
from predictor.store import (
    Base,
    Device,
    add_validation,
    create_store_engine,
    downgrade_schema,
    get_stored_model,
    list_devices,
    register_device,
    session_factory,
    session_scope,
    start_run,
    upgrade_schema,
)

TABLES = {"devices", "profiling_runs", "measurements", "regressors", "validations", "models", "measured_kernels",
          "measurement_tallies", "model_blobs", "jobs"}
HEAD = "0005"


def _add_device(engine: Engine, name: str = "cpu") -> None:
    with session_scope(session_factory(engine)) as session:
        register_device(
            session,
            name=name,
            backend="onnxruntime",
            execution_provider="CPUExecutionProvider",
            runtime_version="1.18.0",
            threads=4,
            host="Intel Xeon",
        )


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_upgrade_creates_all_tables(store_engine: Engine) -> None:
    inspector = inspect(store_engine)
    assert TABLES <= set(inspector.get_table_names())
    unique = {tuple(c["column_names"]) for c in inspector.get_unique_constraints("measurements")}
    # (device, key) first: the index a key's run medians are read by is the uniqueness index.
    assert unique == {("device_id", "key_hash", "run_id")}
    assert ("device_id", "op_type") in {
        tuple(c["column_names"]) for c in inspector.get_unique_constraints("regressors")
    }
    indexed = {tuple(index["column_names"]) for index in inspector.get_indexes("measurements")}
    # PostgreSQL lists the unique constraint's index too.
    assert indexed - {("device_id", "key_hash", "run_id")} == {("device_id", "id"), ("device_id", "op_type", "id")}
    assert inspector.get_pk_constraint("measured_kernels")["constrained_columns"] == ["device_id", "key_hash"]
    assert {tuple(index["column_names"]) for index in inspector.get_indexes("measured_kernels")} == {
        ("device_id", "seq"), ("device_id", "shape_hash"), ("device_id",)}
    assert inspector.get_pk_constraint("measurement_tallies")["constrained_columns"] == ["device_id", "op_type",
                                                                                          "bits"]
    assert {tuple(index["column_names"]) for index in inspector.get_indexes("jobs")} == {
        ("device_id",), ("status", "created_at")}
    foreign = inspector.get_foreign_keys("measurements")
    assert [(fk["referred_table"], fk["constrained_columns"]) for fk in foreign] == [
        ("devices", ["device_id"])
    ]
    assert {column["name"] for column in inspector.get_columns("models")} == {
        "id",
        "name",
        "size_bytes",
        "created_at",
        "inputs",
        "kernels",
    }
    assert _revision(store_engine) == HEAD


def test_migration_matches_models(store_engine: Engine) -> None:
    with store_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_upgrade_schema_twice_is_a_noop(store_engine: Engine) -> None:
    _add_device(store_engine, "kept")
    tables_before = set(inspect(store_engine).get_table_names())

    upgrade_schema(store_engine)

    assert set(inspect(store_engine).get_table_names()) == tables_before
    assert _revision(store_engine) == HEAD
    with store_engine.connect() as connection:
        assert connection.execute(select(Device.name)).scalars().all() == ["kept"]
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1


def test_downgrade_to_base_and_back(sqlite_url: str) -> None:
    engine = create_store_engine(sqlite_url)
    upgrade_schema(engine)
    downgrade_schema(engine, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    assert _revision(engine) is None
    upgrade_schema(engine)
    assert TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_sqlite_engine_creates_folder_and_sets_pragmas(sqlite_url: str) -> None:
    database = Path(make_url(sqlite_url).database or "")
    assert not database.parent.exists()
    engine = create_store_engine(sqlite_url)
    assert database.parent.is_dir()
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        assert connection.execute(text("PRAGMA busy_timeout")).scalar_one() == 30000
    engine.dispose()


@pytest.mark.postgres
def test_plain_postgresql_url_uses_psycopg3(postgres_url: str) -> None:
    plain = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    assert plain.startswith("postgresql://")
    engine = create_store_engine(plain)
    assert engine.dialect.driver == "psycopg"
    assert engine.pool._pre_ping  # type: ignore[attr-defined]
    engine.dispose()


@pytest.mark.parametrize(
    "url",
    ["postgresql://postgres@127.0.0.1:1/latpred", "sqlite:///{tmp}"],
    ids=["postgres-refused", "sqlite-path-is-a-folder"],
)
def test_unreachable_database_raises_store_error(url: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot connect to database") as info:
        create_store_engine(url.format(tmp=tmp_path))
    assert isinstance(info.value, LatpredError)


def test_session_scope_commits_or_rolls_back(store_engine: Engine) -> None:
    factory = session_factory(store_engine)
    with pytest.raises(RuntimeError, match="boom"):
        with session_scope(factory) as session:
            session.add(
                Device(
                    name="ghost",
                    backend="onnxruntime",
                    execution_provider="CPUExecutionProvider",
                    runtime_version="1.18.0",
                    threads=1,
                    host="x",
                )
            )
            session.flush()
            raise RuntimeError("boom")
    _add_device(store_engine, "real")
    with session_scope(factory) as session:
        devices = session.scalars(select(Device)).all()
    assert [device.name for device in devices] == ["real"]
    # expire_on_commit=False: attributes stay readable after the scope closed.
    assert devices[0].created_at.tzinfo is not None
    assert devices[0].created_at.utcoffset() == UTC.utcoffset(None)


def test_migration_0002_forgets_stored_kernel_lists(sqlite_url: str) -> None:
    """Kernel lists stored before 0002 may hold bytes of files beside the server: none survives the upgrade."""
    engine = create_store_engine(sqlite_url)
    upgrade_schema(engine, "0001")
    leaked = {"name": "w", "key": {"op_type": "Gemm", "inputs": [[1, 4]], "outputs": [[1, 4]], "weight": [72, 78]}}
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO models (id, name, size_bytes, created_at, inputs, kernels) "
                 "VALUES (:id, 'm.onnx', 5, '2026-01-01 00:00:00', '{}', :kernels)"),
            {"id": "a" * 64, "kernels": json.dumps([leaked])})
    upgrade_schema(engine, "0002")
    assert _revision(engine) == "0002"
    with session_scope(session_factory(engine)) as session:
        stored = get_stored_model(session, "a" * 64)
        assert stored is not None and stored.kernels is None and stored.name == "m.onnx"
    engine.dispose()


def test_migration_0003_keeps_devices_runs_and_validations(sqlite_url: str) -> None:
    """0003 adds what decides a device's kernels, where runs measured, and scaled validations; rows stay."""
    engine = create_store_engine(sqlite_url)
    upgrade_schema(engine, "0002")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO devices (name, backend, execution_provider, runtime_version, threads, "
                                "host, created_at) VALUES ('before', 'onnxruntime', 'CPUExecutionProvider', '1.18', 1, "
                                "'', '2026-01-01 00:00:00')"))
    upgrade_schema(engine)
    assert _revision(engine) == HEAD
    with session_scope(session_factory(engine)) as session:
        device = list_devices(session)[0]
        assert (device.name, device.kernel_profile) == ("before", None)
        run = start_run(session, device, "r1", 5.0, runtime={"backend": "onnxruntime"}, host="a host")
        assert (run.runtime, run.host) == ({"backend": "onnxruntime"}, "a host")
        assert add_validation(session, device, model_name="m", config_name="c", predicted_ms=1.0, measured_ms=2.0,
                              scaled_ms=1.9).scaled_ms == 1.9
    downgrade_schema(engine, "0002")
    assert _revision(engine) == "0002"
    with engine.connect() as connection:  # dropping a column of devices deletes no row that refers to a device
        assert connection.execute(text("SELECT count(*) FROM validations")).scalar_one() == 1
        assert connection.execute(text("SELECT count(*) FROM profiling_runs")).scalar_one() == 1
    engine.dispose()
