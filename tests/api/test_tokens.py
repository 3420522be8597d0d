"""The tokens file: both entry forms, every malformed shape refused at start naming the entry (never the
token), and a change that cannot be used logged and counted while the previous tokens stay in force."""

from __future__ import annotations

import asyncio
import json

import pytest

from controlplane_api.auth import Caller, TokenFileError, load_tokens
from tests.api.support import RG, Proc, V, _env, spawn, start_api, write_tokens

TOKEN = "s3cret-token-value"


def test_both_forms_load_from_yaml_and_json(tmp_path):
    yaml_file = tmp_path / "tokens.yaml"
    yaml_file.write_text("tok-a: tenant-a\ntok-b:\n  tenant: tenant-b\n  subscriptions: [AAAA-bbbb, sub-2]\n")
    json_file = write_tokens(tmp_path, {"tok-a": "tenant-a", "tok-b": {"tenant": "tenant-b", "subscriptions": []}})
    assert load_tokens(yaml_file) == {
        "tok-a": Caller("tenant-a"),
        "tok-b": Caller("tenant-b", frozenset({"aaaa-bbbb", "sub-2"})),
    }
    scoped = load_tokens(json_file)["tok-b"]
    assert scoped == Caller("tenant-b", frozenset()) and not scoped.holds("sub-1") and scoped.holds("")
    assert Caller("t").holds("any") and Caller("t", frozenset({"aaaa"})).holds("AAAA")


def test_the_operator_role(tmp_path):
    path = write_tokens(
        tmp_path,
        {
            "ops": {"tenant": "ops", "role": "operator"},
            "ops-scoped": {"tenant": "ops", "role": "operator", "subscriptions": ["S-1"]},
            "plain": {"tenant": "t", "role": "tenant"},
        },
    )
    assert load_tokens(path) == {
        "ops": Caller("ops", None, operator=True),
        "ops-scoped": Caller("ops", frozenset({"s-1"}), operator=True),
        "plain": Caller("t"),
    }


@pytest.mark.parametrize(
    "entry, says",
    [
        ("", "the tenant is empty"),
        (5, "a tenant name or a mapping"),
        (["t"], "a tenant name or a mapping"),
        ({"subscriptions": ["s"]}, "'tenant' must be"),
        ({"tenant": "", "subscriptions": ["s"]}, "'tenant' must be"),
        ({"tenant": "t"}, "'subscriptions' must be a list"),
        ({"tenant": "t", "subscriptions": "sub-1"}, "'subscriptions' must be a list"),
        ({"tenant": "t", "subscriptions": [1]}, "'subscriptions' must be a list"),
        ({"tenant": "t", "subscriptions": [""]}, "'subscriptions' must be a list"),
        ({"tenant": "t", "subscriptions": ["s"], "subscription": ["x"]}, "unknown keys ['subscription']"),
        ({"tenant": "t", "role": "admin"}, "'role' must be one of ['tenant', 'operator']"),
        ({"tenant": "t", "role": ["operator"]}, "'role' must be one of"),
        ({"tenant": "t", "role": "operator", "subscriptions": "s"}, "'subscriptions' must be a list"),
    ],
)
def test_a_malformed_entry_is_named_by_position_never_by_token(tmp_path, entry, says):
    path = write_tokens(tmp_path, {"good-token": "tenant-a", TOKEN: entry})
    with pytest.raises(TokenFileError) as raised:
        load_tokens(path)
    assert "entry 2" in str(raised.value) and says in str(raised.value), raised.value
    assert TOKEN not in str(raised.value)


def test_a_token_that_is_not_a_string_is_refused(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text("12345678: tenant-a\n")
    with pytest.raises(TokenFileError, match="entry 1: the token must be a non-empty string") as raised:
        load_tokens(path)
    assert "12345678" not in str(raised.value)


@pytest.mark.rabbitmq
async def test_cpw_api_refuses_a_malformed_entry_at_start(vhost_url, tmp_path):
    tokens = write_tokens(tmp_path, {TOKEN: {"tenant": "t", "subscriptions": "sub-1"}})
    env = _env(vhost_url, {"CPW_API_PORT": 0, "CPW_HEALTH_PORT": 0, "CPW_API_TOKENS_FILE": tokens})
    proc = Proc(spawn(["api"], env, tmp_path / "api.log"), tmp_path / "api.log")
    assert proc.proc.wait(30) == 2
    assert "entry 1 (tenant 't')" in proc.output() and TOKEN not in proc.output()


@pytest.mark.rabbitmq
async def test_a_bad_change_is_logged_and_counted_and_the_old_tokens_stay(vhost_url, tmp_path, http):
    path = write_tokens(tmp_path, {"old-token": "tenant-a"})
    api = await start_api(vhost_url, tmp_path, CPW_API_TOKENS_FILE=path)
    old = {"Authorization": "Bearer old-token"}
    new = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert (await http.get(f"{api.url}/jobs", headers=old)).status_code == 200
        path.write_text(json.dumps({TOKEN: {"tenant": "tenant-b", "subscriptions": "sub-1"}}))  # a bad edit
        await asyncio.sleep(5.5)  # TokenAuth rechecks the file at most every 5 s
        for _ in range(3):
            assert (await http.get(f"{api.url}/jobs", headers=old)).status_code == 200  # kept, as before
        assert (await http.get(f"{api.url}/jobs", headers=new)).status_code == 401
        metrics = (await http.get(f"{api.ops_url}/metrics")).text
        assert "cpw_api_token_reload_failures_total 1.0" in metrics
        lines = [line for line in api.output().splitlines() if "token file" in line]
        assert len(lines) == 1 and "previous tokens stay in force" in lines[0] and "entry 1" in lines[0], lines
        assert TOKEN not in api.output()

        path.write_text(json.dumps({TOKEN: {"tenant": "tenant-b", "subscriptions": ["sub-1"]}}))  # fixed
        await asyncio.sleep(5.5)
        assert (await http.get(f"{api.url}/jobs", headers=new)).status_code == 200
        assert (await http.get(f"{api.url}/jobs", headers=old)).status_code == 401  # revoked at last
        assert any("read again" in line for line in api.output().splitlines())
        response = await http.put(f"{api.url}{RG}/x", params=V, headers=new, json={})  # RG is in sub-1
        assert response.status_code == 201, response.text
    finally:
        api.stop()
