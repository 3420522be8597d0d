"""Settings from the environment (CPW_*, the seed's names, *_FILE secrets) and the JSON logs."""

from __future__ import annotations

import io
import json
import logging

import pytest

from controlplane_workers import logs
from controlplane_workers.logs import JsonFormatter, job_id_var
from controlplane_workers.redact import redact_text, redact_url
from controlplane_workers.settings import SettingsError, load_settings


def test_seed_names_are_accepted(monkeypatch):
    for name, value in {
        "RABBITMQ_URL": "amqp://a:b@rabbit:5672/",
        "WORKER_ID": "w-7",
        "LOG_LEVEL": "debug",
        "HEALTH_CHECK_PORT": "9001",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.rabbitmq_url, settings.worker_id, settings.log_level, settings.health_port) == (
        "amqp://a:b@rabbit:5672/",
        "w-7",
        "DEBUG",
        9001,
    )


def test_cpw_names_win_over_seed_names(monkeypatch):
    monkeypatch.setenv("RABBITMQ_URL", "amqp://seed/")
    monkeypatch.setenv("CPW_RABBITMQ_URL", "amqp://cpw/")
    assert load_settings().rabbitmq_url == "amqp://cpw/"


def test_secret_from_file(monkeypatch, tmp_path):
    secret = tmp_path / "url"
    secret.write_text("amqps://user:s3cret@broker:5671/prod\n")
    monkeypatch.setenv("CPW_RABBITMQ_URL_FILE", str(secret))
    settings = load_settings()
    assert settings.rabbitmq_url == "amqps://user:s3cret@broker:5671/prod"
    assert "s3cret" not in json.dumps(settings.safe_dump())


def test_unreadable_secret_file_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("CPW_RABBITMQ_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="^CPW_RABBITMQ_URL_FILE: cannot read"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CPW_MAX_CONCURRENT_JOBS", "0", "CPW_MAX_CONCURRENT_JOBS: Input should be greater than or equal to 1"),
        ("CPW_QUEUE_TYPE", "lazy", "CPW_QUEUE_TYPE: Input should be 'classic' or 'quorum'"),
        (
            "CPW_RABBITMQ_URL",
            "redis://x",
            "CPW_RABBITMQ_URL: Value error, must start with amqp://, amqps:// or memory://",
        ),
        ("CPW_RESULTS_MAX_AGE", "1 week", "CPW_RESULTS_MAX_AGE: String should match pattern"),
    ],
)
def test_bad_values_give_one_line_naming_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_redaction():
    assert redact_url("amqp://user:pw@host:5672/vh") == "amqp://user:***@host:5672/vh"
    assert redact_url("amqp://host/") == "amqp://host/"
    assert (
        redact_text("failed amqps://u:p%40ss@h/ and http://a:b@c:15672")
        == "failed amqps://u:***@h/ and http://a:***@c:15672"
    )


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("GET https://a.blob.core.windows.net/c?sv=2024-01-01&sig=AbC%2Bd%3D&se=2030 failed", "sv=2024-01-01"),
        ("Authorization: Bearer eyJhbGciOi.eyJzdWIi.SIGNATURE_x-y", "Authorization: Bearer ***"),
        ("header SharedAccessSignature sr=https%3A%2F%2Fns&sig=abc%3D&se=1&skn=RootKey", "SharedAccessSignature ***"),
        ("Endpoint=sb://ns/;SharedAccessKeyName=Root;SharedAccessKey=K3y/+=", "SharedAccessKeyName=Root"),
        ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=Zm9v+YmFy==;EndpointSuffix=x", "AccountName=acct"),
        ("connect host=db user=app password=hunter2 sslmode=require", "sslmode=require"),
        ("{'client_secret': 'abc123', 'api_key': \"k-1\", \"token\": \"t0k\"}", "client_secret"),
    ],
)
def test_redaction_masks_tokens_keys_and_signatures(text: str, kept: str) -> None:
    redacted = redact_text(text)
    assert "***" in redacted and kept in redacted, redacted
    for secret in ("AbC", "SIGNATURE", "eyJ", "abc%3D", "K3y", "Zm9v", "hunter2", "abc123", "k-1", "t0k"):
        assert secret not in redacted, (secret, redacted)


def test_json_logs_carry_job_and_worker_and_hide_passwords(monkeypatch):
    monkeypatch.setattr(logs, "_worker_id", "w-1")  # what setup_logging(worker_id=...) sets
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.logs")
    log.addHandler(handler)
    token = job_id_var.set("job-42")
    try:
        log.warning("cannot reach amqp://admin:hunter2@rabbit/", extra={"attempt": 2})
    finally:
        job_id_var.reset(token)
        log.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["worker_id"] == "w-1" and entry["job_id"] == "job-42" and entry["attempt"] == 2
    assert entry["message"] == "cannot reach amqp://admin:***@rabbit/" and entry["level"] == "WARNING"


def test_a_burst_of_the_same_warning_is_one_line_then_one_with_the_count(caplog):
    from controlplane_workers.logs import Bursts

    now = [0.0]
    bursts = Bursts(logging.getLogger("cpw.test.bursts"), every=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "cpw.test.bursts"):
        for _ in range(32):  # a node's loss hands back every job in flight at once
            bursts.warning("job handed back")
        bursts.warning("another kind")
        now[0] = 10.0
        bursts.warning("job handed back")
    assert [r.getMessage() for r in caplog.records] == [
        "job handed back",
        "another kind",
        "job handed back (31 more since the last such line)",
    ]
