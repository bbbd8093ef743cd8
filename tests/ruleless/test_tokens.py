"""The API token store (ruleless/tokens.py) and `ruleless token create | list | revoke`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from ruleless.tokens import TokenStore
from schemas.errors import ConfigError
from tests.processes import RULELESS


def test_a_token_is_stored_hashed_owner_only_and_verified(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    record, secret = store.create("acme", name="alice")
    assert secret.startswith(f"rl_{record.id}_") and len(secret) > 40
    body = (tmp_path / "tokens.json").read_text()
    assert secret not in body and secret.split("_", 2)[2] not in body
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600
    caller = store.verify(secret)
    assert caller is not None and (caller.org, caller.admin, caller.token_id) == ("acme", False, record.id)
    # A second store (another process: the API) sees tokens made and revoked since.
    api = TokenStore(tmp_path / "tokens.json")
    _, admin = store.create("ops", admin=True)
    assert api.verify(admin) is not None and api.verify(admin).admin  # type: ignore[union-attr]
    store.revoke(record.id)
    assert api.verify(secret) is None
    assert store.revoke(record.id).revoked_at is not None  # (idempotent)


@pytest.mark.parametrize("forged", ["", "rl", "rl__", "Bearer x", "rl_deadbeef_x", "xx_{id}_{secret}", "rl_{id}_{secret}x", "rl_{id}_"])
def test_forged_tokens_are_refused(tmp_path: Path, forged: str) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    record, secret = store.create("acme")
    text = forged.format(id=record.id, secret=secret.split("_", 2)[2])
    assert store.verify(text) is None


def test_bad_org_names_and_unknown_ids_are_clear_errors(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    with pytest.raises(ConfigError, match="not an org name"):
        store.create("acme/../x")
    with pytest.raises(ConfigError, match="no token with id"):
        store.revoke("nope")
    assert not store.has_active()


def test_token_cli_create_list_revoke(tmp_path: Path) -> None:
    env = {**os.environ, "RULELESS_DATA_DIR": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([RULELESS, "token", *args], env=env, capture_output=True, text=True, timeout=60)

    made = run("create", "--org", "acme")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    token_id = secret.split("_")[1]
    assert "shown once" in made.stderr
    assert run("create", "--org", "ops", "--admin").returncode == 0
    listed = [json.loads(line) for line in run("list", "--json").stdout.splitlines()]
    assert [(t["org"], t["admin"], t["revoked_at"]) for t in listed] == [("acme", False, None), ("ops", True, None)]
    assert secret not in run("list").stdout
    assert run("revoke", token_id).returncode == 0
    assert [t["revoked_at"] is not None for t in map(json.loads, run("list", "--json").stdout.splitlines())] == [True, False]
    missing = run("revoke", "nope")
    assert missing.returncode == 2 and "no token with id" in missing.stderr
    assert stat.S_IMODE((tmp_path / "api-tokens.json").stat().st_mode) == 0o600
