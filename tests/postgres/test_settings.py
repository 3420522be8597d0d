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
