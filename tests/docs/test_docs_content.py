"""The hand-written docs: their Python is the tested examples' code, their links resolve, and they
answer what the issue asks (troubleshooting, runbooks, TLS)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Pages other sessions are writing; a link to them may land before the page does.
PENDING = {ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "autoscaling.md"}


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_python_in_providers_md_is_code_from_the_tested_examples() -> None:
    """Every ```python block is a verbatim excerpt of a file in examples/ (which test_examples.py runs)."""
    examples = {p.name: p.read_text() for p in (ROOT / "examples").glob("*.py")}
    blocks = _blocks((DOCS / "providers.md").read_text(), "python")
    assert len(blocks) >= 4
    for block in blocks:
        assert any(block in source for source in examples.values()), f"not in examples/:\n{block}"


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code (regexes in the generated tables)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def _anchors(path: Path) -> set[str]:
    out = set()
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.S), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize(
    "doc",
    [
        "README.md",
        "docs/providers.md",
        "docs/operations.md",
        "docs/security.md",
        "docs/configuration.md",
        "docs/migrating.md",
    ],
)
def test_relative_links_resolve(doc: str) -> None:
    path = ROOT / doc
    for link in _links(path):
        if re.match(r"[a-z]+://|mailto:", link):
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if file in PENDING and not file.exists():
            continue
        assert file.exists(), f"{doc}: broken link {link}"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{doc}: no heading for #{anchor} in {file.relative_to(ROOT)}"


def test_operations_md_answers_the_troubleshooting_questions() -> None:
    text = (DOCS / "operations.md").read_text()
    for needle in (
        "## Troubleshooting",
        "not consuming",
        "stuck in `Accepted`",
        "dead-letter",
        "unreachable",
        "not scaling",
        "503",
        "cpw dlq list",
        "cpw dlq redrive",
        "CPW_DRAIN_TIMEOUT",
        "terminationGracePeriodSeconds",
        "runbooks.md",
        "## Upgrades",
        "## Scaling",
        "## Draining",
    ):
        assert needle in text, needle


def test_every_alert_is_listed_in_operations_md() -> None:
    rules = (ROOT / "alerts" / "controlplane-workers.rules.yaml").read_text()
    text = (DOCS / "operations.md").read_text()
    for alert in sorted(set(re.findall(r"alert:\s*(\w+)", rules))):
        assert alert in text, alert


def test_security_md_covers_the_threat_model_and_tls() -> None:
    text = (DOCS / "security.md").read_text()
    for needle in (
        "## Threat model",
        "readOnlyRootFilesystem",
        "NetworkPolic",
        "tenant",
        "amqps://",
        "cafile=",
        "certfile=",
        "keyfile=",
        "_FILE",
        "redact",
    ):
        assert needle in text, needle


async def test_tls_url_parameters_named_in_security_md_are_the_ones_aiormq_reads() -> None:
    """security.md tells operators to put the CA file in the URL; prove the AMQP client reads those names.
    (Async: aiormq.Connection asks for the running loop, and an earlier test may have closed the default one.)"""
    import aiormq

    url = "amqps://u:p@rabbitmq.example:5671/vh?cafile=/ca.pem&certfile=/tls.crt&keyfile=/tls.key"
    connection = aiormq.Connection(url)
    certs = connection.ssl_certs
    assert (certs.cafile, certs.cert, certs.key, certs.verify) == ("/ca.pem", "/tls.crt", "/tls.key", True)
    assert connection.url.port == 5671
    assert aiormq.Connection(url + "&no_verify_ssl=1").ssl_certs.verify is False
