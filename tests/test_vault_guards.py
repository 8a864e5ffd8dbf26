"""Vault configurations and tokens that would have side effects: refused before anything is done.

- A KV version that does not match the secrets engine (the server says which) is a configuration
  error at start: exit 3, one line naming both versions. (Before: a v2 mount of a v1 engine
  mounted, showed nothing, and stored `{"data": {...}}` wrappers.)
- A rename the token may not finish (no `delete` on the old name) fails before the new name is
  written: EACCES, and both secrets are as they were. (Before: the destination was overwritten,
  then the rename failed.)
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

import pytest

from secretfs.errors import EXIT_CONFIG
from tests.support.bao import KV1_MOUNT, BaoServer, vault_env
from tests.support.mount import make_instance, mounted, os_read

pytestmark = [pytest.mark.server]


def unique() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize(
    ("version", "path", "engine"),
    [("2", f"{KV1_MOUNT}/{{sub}}", "1"), ("1", "secret/data/{sub}", "2")],
)
def test_a_kv_version_that_does_not_match_the_engine_is_refused(
    tmp_path: Path, bao_server: BaoServer, version: str, path: str, engine: str
) -> None:
    sub = unique()
    env = vault_env(bao_server, path.format(sub=sub))
    env["ARCHESTRA_HASHICORP_VAULT_KV_VERSION"] = version
    instance = make_instance(tmp_path, **env)
    for command in (["ls"], ["put", "x"]):
        result = instance.cli(*command, input=b"v", check=False)
        assert result.returncode == EXIT_CONFIG, result.stderr
        message = result.stderr.decode()
        assert f"KV_VERSION={version}" in message and f"is KV version {engine}" in message, message
        assert "Traceback" not in message
    if engine == "1":  # nothing was written as a {"data": ...} wrapper
        assert bao_server.api("GET", f"{KV1_MOUNT}/{sub}/x").status_code == 404


def test_matching_versions_still_mount(tmp_path: Path, bao_server: BaoServer) -> None:
    sub = unique()
    bao_server.cli("kv", "put", f"{KV1_MOUNT}/{sub}/k", "value=one")
    env = vault_env(bao_server, f"{KV1_MOUNT}/{sub}")
    env["ARCHESTRA_HASHICORP_VAULT_KV_VERSION"] = "1"
    assert make_instance(tmp_path, **env).cli("get", "k").stdout == b"one"


@pytest.mark.mount
def test_a_rename_the_token_cannot_finish_changes_nothing(tmp_path: Path, bao_server: BaoServer) -> None:
    sub = unique()
    bao_server.cli("kv", "put", "-mount=secret", f"{sub}/src", "value=source")
    bao_server.cli("kv", "put", "-mount=secret", f"{sub}/dest", "value=destination")
    policy = (
        f'path "secret/data/{sub}/*" {{ capabilities = ["create", "read", "update", "list"] }}\n'
        f'path "secret/metadata/{sub}/*" {{ capabilities = ["read", "list"] }}\n'
        f'path "secret/metadata/{sub}" {{ capabilities = ["read", "list"] }}'
    )
    bao_server.ok("PUT", f"sys/policies/acl/{sub}", json={"policy": policy})
    token = bao_server.ok("POST", "auth/token/create", json={"policies": [sub], "ttl": "1h"})["auth"]["client_token"]
    env = vault_env(bao_server, f"secret/data/{sub}")
    env["ARCHESTRA_HASHICORP_VAULT_TOKEN"] = token
    instance = make_instance(tmp_path, **env)
    with mounted(instance, tmp_path / "mnt") as m:
        assert os_read(m.path / "dest") == b"destination"
        with pytest.raises(OSError) as info:
            os.rename(m.path / "src", m.path / "dest")
        assert info.value.errno == errno.EACCES
        assert os_read(m.path / "dest") == b"destination"
        assert os_read(m.path / "src") == b"source"
        (m.path / "dest").write_bytes(b"still writable")  # the token may write: only the rename was refused
        assert os_read(m.path / "dest") == b"still writable"
    assert bao_server.cli("kv", "get", "-mount=secret", "-field=value", f"{sub}/src").stdout.strip() == "source"
