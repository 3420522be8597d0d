"""The `pods:` summary line, printed whatever pytest captured (make pods shows it)."""

from __future__ import annotations

from collections import Counter

import pytest

STATS: Counter[str] = Counter()
HELM_TEST: list[bool] = []


@pytest.fixture
def pod_stats() -> Counter[str]:
    return STATS


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    if not STATS:
        return
    helm_test = "ok" if HELM_TEST and all(HELM_TEST) else "failed"
    terminalreporter.write_line(
        f"pods: value_sets={STATS['value_sets']} workloads={STATS['workloads']} started={STATS['started']} "
        f"probes_passed={STATS['probes_passed']} jobs_ok={STATS['jobs_ok']} helm_test={helm_test}"
    )
