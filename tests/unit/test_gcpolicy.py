"""gcpolicy: after a full collection the survivors are frozen, so the next one skips them."""

from __future__ import annotations

import gc

import pytest

from controlplane_workers import gcpolicy


@pytest.fixture
def policy():
    gcpolicy.install()
    yield
    gcpolicy.uninstall()


@pytest.mark.timeout(30)
def test_full_collection_freezes_its_survivors(policy):
    kept = [{"job": i} for i in range(1000)]  # long-lived, like index records
    gc.collect()
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept)
    gc.collect(1)  # a young collection freezes nothing
    assert gc.get_freeze_count() <= frozen + 1000


@pytest.mark.timeout(30)
def test_frozen_objects_are_still_freed_by_reference_counting(policy):
    gc.collect()
    before = gc.get_freeze_count()
    kept = [[i] for i in range(1000)]
    gc.collect()
    assert gc.get_freeze_count() >= before + 1000
    del kept  # no cycle: reference counting frees them although they are frozen
    assert gc.get_freeze_count() < before + 1000


@pytest.mark.timeout(30)
def test_install_is_idempotent_and_uninstall_unfreezes():
    gcpolicy.install()
    gcpolicy.install()
    assert gc.callbacks.count(gcpolicy._on_gc) == 1
    gc.collect()
    gcpolicy.uninstall()
    assert gcpolicy._on_gc not in gc.callbacks
    assert gc.get_freeze_count() == 0
