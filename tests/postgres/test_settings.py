"""The PostgreSQL DSN: read from a mounted file, never shown with its password."""

from __future__ import annotations

from controlplane_api.settings import load_api_settings


def test_the_dsn_comes_from_its_file_and_is_redacted(tmp_path, monkeypatch):
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://cpw:hunter2@db:5432/ops\n")
    monkeypatch.setenv("CPW_POSTGRES_URL_FILE", str(secret))
    monkeypatch.setenv("CPW_API_STORE", "postgresql")
    settings = load_api_settings()
    assert settings.api_store == "postgresql" and settings.postgres_url == "postgresql://cpw:hunter2@db:5432/ops"
    assert settings.safe_dump()["postgres_url"] == "postgresql://cpw:***@db:5432/ops"


def test_without_a_dsn_the_commands_say_so_and_exit_2():
    import subprocess
    import sys

    from tests.api.support import _env

    env = _env("amqp://127.0.0.1:1/", {"CPW_API_STORE": "postgresql", "CPW_API_ALLOW_ANONYMOUS": "true"})
    for command in ("api", "indexer"):
        done = subprocess.run(
            [sys.executable, "-m", "controlplane_workers.cli", command], env=env, capture_output=True, text=True
        )
        assert done.returncode == 2 and "CPW_POSTGRES_URL" in done.stderr, done.stderr


def test_the_operation_retention_is_days_from_one_to_ten_years():
    import pytest

    from controlplane_workers.settings import SettingsError

    assert load_api_settings().operation_retention == 30
    for given, days in (("30d", 30), ("7D", 7), ("1", 1), ("3650d", 3650)):
        assert load_api_settings(operation_retention=given).operation_retention == days
    for bad in ("0d", "3651d", "-1", "30h", "d", ""):
        with pytest.raises(SettingsError, match="OPERATION_RETENTION"):
            load_api_settings(operation_retention=bad)


def test_the_projector_backlog_is_at_least_one_message():
    import pytest

    from controlplane_workers.settings import SettingsError

    assert load_api_settings().indexer_backlog_messages == 512
    assert load_api_settings(indexer_backlog_messages=1).indexer_backlog_messages == 1
    for bad in (0, -1, "many"):
        with pytest.raises(SettingsError, match="INDEXER_BACKLOG_MESSAGES"):
            load_api_settings(indexer_backlog_messages=bad)
