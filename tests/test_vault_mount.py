"""VAULT and READONLY_VAULT through real mounts against a real OpenBao server, both directions."""

from __future__ import annotations

import base64
import errno
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from secretfs.errors import EXIT_REFUSED
from tests.support.bao import KV1_MOUNT, BaoServer, vault_env
from tests.support.mount import Instance, make_instance, mounted
from tests.support.wait import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.server]


def vault_instance(tmp_path: Path, bao: BaoServer, subpath: str, **extra: str) -> Instance:
    """A VAULT-mode instance over the dev server's `secret/` KV v2 mount, under its own prefix."""
    env = vault_env(bao, f"secret/data/{subpath}")
    env.update(extra)
    return make_instance(tmp_path, **env)


def unique() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def test_bao_kv_put_appears_in_mount(tmp_path: Path, bao_server: BaoServer) -> None:
    sub = unique()
    bao_server.cli("kv", "put", "-mount=secret", f"{sub}/app/db", "user=app", "password=pw-1", "host=db.internal")
    bao_server.cli("kv", "put", "-mount=secret", f"{sub}/api_token", "value=tok-123")
    blob = bytes(range(256))
    bao_server.cli(
        "kv",
        "put",
        "-mount=secret",
        f"{sub}/certs/keystore",
        f"value={base64.b64encode(blob).decode()}",
        "encoding=base64",
    )
    inst = vault_instance(tmp_path, bao_server, sub)
    with mounted(inst, tmp_path / "mnt") as m:
        assert sorted(os.listdir(m.path)) == ["api_token", "app", "certs"]
        assert os.listdir(m.path / "app") == ["db"]
        assert (m.path / "api_token").read_bytes() == b"tok-123"
        rendered = (m.path / "app" / "db").read_text()
        assert rendered == json.dumps({"host": "db.internal", "password": "pw-1", "user": "app"}, indent=2) + "\n"
        assert (m.path / "certs" / "keystore").read_bytes() == blob
        assert (m.path / "app" / "db").stat().st_size == len(rendered.encode())
        # a change made in Vault shows on the next read
        bao_server.cli("kv", "put", "-mount=secret", f"{sub}/api_token", "value=tok-456")
        wait_until(
            lambda: (m.path / "api_token").read_bytes() == b"tok-456",
            10,
            interval=0.2,
            message="the change did not show",
        )


def bao_get(bao: BaoServer, path: str) -> dict[str, Any]:
    out = bao.cli("kv", "get", "-format=json", "-mount=secret", path).stdout
    data: dict[str, Any] = json.loads(out)["data"]["data"]
    return data


def test_mount_writes_seen_by_bao_and_rm_removes_every_version(tmp_path: Path, bao_server: BaoServer) -> None:
    sub = unique()
    inst = vault_instance(tmp_path, bao_server, sub)
    with mounted(inst, tmp_path / "mnt") as m:
        (m.path / "plain").write_bytes(b"s3cret\n")
        assert bao_get(bao_server, f"{sub}/plain") == {"value": "s3cret\n"}
        os.mkdir(m.path / "svc")
        (m.path / "svc" / "creds").write_text('{"user": "u", "pass": "p"}')
        assert bao_get(bao_server, f"{sub}/svc/creds") == {"user": "u", "pass": "p"}
        (m.path / "svc" / "creds").write_text('{"user": "u2"}')  # a whole replacement: a second version
        assert bao_get(bao_server, f"{sub}/svc/creds") == {"user": "u2"}
        meta = bao_server.ok("GET", f"secret/metadata/{sub}/svc/creds")["data"]
        assert meta["current_version"] == 2

        os.rename(m.path / "plain", m.path / "svc" / "moved")
        assert bao_get(bao_server, f"{sub}/svc/moved") == {"value": "s3cret\n"}
        assert bao_server.api("GET", f"secret/metadata/{sub}/plain").status_code == 404

        os.unlink(m.path / "svc" / "creds")
        assert not (m.path / "svc" / "creds").exists()
        assert bao_server.api("GET", f"secret/metadata/{sub}/svc/creds").status_code == 404
        for version in (1, 2):
            got = bao_server.api("GET", f"secret/data/{sub}/svc/creds", params={"version": version})
            assert got.status_code == 404
        assert sorted(os.listdir(m.path / "svc")) == ["moved"]

        # CLI put and rm against the same prefix
        inst.cli("put", "svc/cli", input=b"from-cli")
        assert bao_get(bao_server, f"{sub}/svc/cli") == {"value": "from-cli"}
        inst.cli("rm", "svc/cli")
        assert bao_server.api("GET", f"secret/metadata/{sub}/svc/cli").status_code == 404


def test_kv1_mount_both_directions(tmp_path: Path, bao_server: BaoServer) -> None:
    sub = unique()
    bao_server.cli("kv", "put", f"{KV1_MOUNT}/{sub}/nested/k", "a=1", "b=2")
    inst = vault_instance(
        tmp_path,
        bao_server,
        sub,
        ARCHESTRA_HASHICORP_VAULT_KV_VERSION="1",
        ARCHESTRA_HASHICORP_VAULT_SECRET_PATH=f"{KV1_MOUNT}/{sub}",
    )
    with mounted(inst, tmp_path / "mnt") as m:
        assert json.loads((m.path / "nested" / "k").read_text()) == {"a": "1", "b": "2"}
        (m.path / "new").write_bytes(b"v1-value")
        got = json.loads(bao_server.cli("kv", "get", "-format=json", f"{KV1_MOUNT}/{sub}/new").stdout)
        assert got["data"] == {"value": "v1-value"}
        os.unlink(m.path / "nested" / "k")
        assert bao_server.api("GET", f"{KV1_MOUNT}/{sub}/nested/k").status_code == 404


# ----- READONLY_VAULT ------------------------------------------------------------------------------


def expect_errno(code: int, action: Callable[[], object]) -> None:
    with pytest.raises(OSError) as info:
        action()
    assert info.value.errno == code, f"{action}: {info.value}"


def test_readonly_vault_refuses_every_mutation(tmp_path: Path, bao_server: BaoServer) -> None:
    sub = unique()
    bao_server.cli("kv", "put", "-mount=secret", f"{sub}/dir/existing", "value=keep-me")
    bao_server.cli("kv", "put", "-mount=secret", f"{sub}/top", "value=top")
    inst = vault_instance(tmp_path, bao_server, sub, ARCHESTRA_SECRETS_MANAGER="READONLY_VAULT")
    with mounted(inst, tmp_path / "mnt") as m:
        existing = m.path / "dir" / "existing"
        assert existing.read_bytes() == b"keep-me"
        assert (m.path / "top").read_bytes() == b"top"
        assert sorted(os.listdir(m.path)) == ["dir", "top"]
        assert existing.stat().st_mode & 0o777 == 0o400

        def write_existing() -> None:
            fd = os.open(existing, os.O_WRONLY)
            os.close(fd)

        def create_new() -> None:
            fd = os.open(m.path / "dir" / "new", os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)

        expect_errno(errno.EROFS, write_existing)
        expect_errno(errno.EROFS, create_new)
        expect_errno(errno.EROFS, lambda: os.truncate(existing, 0))
        expect_errno(errno.EROFS, lambda: os.unlink(existing))
        expect_errno(errno.EROFS, lambda: os.rename(existing, m.path / "dir" / "moved"))
        expect_errno(errno.EROFS, lambda: os.mkdir(m.path / "newdir"))
        expect_errno(errno.EROFS, lambda: os.rmdir(m.path / "dir"))
        expect_errno(errno.EROFS, lambda: os.setxattr(existing, "user.test", b"x"))
        assert existing.read_bytes() == b"keep-me"
        assert bao_get(bao_server, f"{sub}/dir/existing") == {"value": "keep-me"}

    put = inst.cli("put", "dir/new", input=b"x", check=False)
    assert put.returncode == EXIT_REFUSED
    assert "read-only" in put.stderr.decode()
    rm = inst.cli("rm", "dir/existing", check=False)
    assert rm.returncode == EXIT_REFUSED
    assert "read-only" in rm.stderr.decode()
    assert bao_get(bao_server, f"{sub}/dir/existing") == {"value": "keep-me"}
    assert inst.cli("get", "dir/existing").stdout == b"keep-me"


# ----- status ----------------------------------------------------------------------------------------


def test_status_shows_vault_facts_never_the_token(tmp_path: Path, bao_server: BaoServer) -> None:
    sub = unique()
    policy = 'path "secret/*" { capabilities = ["read", "list"] }'
    bao_server.ok("PUT", f"sys/policies/acl/{sub}", json={"policy": policy})
    created = bao_server.ok("POST", "auth/token/create", json={"policies": [sub], "ttl": "1h", "renewable": True})
    token = created["auth"]["client_token"]
    inst = vault_instance(
        tmp_path,
        bao_server,
        sub,
        ARCHESTRA_HASHICORP_VAULT_TOKEN=token,
        ARCHESTRA_SECRETS_MANAGER="READONLY_VAULT",
    )
    result = inst.cli("status", "--json", "-vv")
    report = json.loads(result.stdout)
    backend = report["backend"]
    assert report["mode"] == report["mode_requested"] == "READONLY_VAULT"
    assert backend["healthy"] is True
    assert backend["address"] == bao_server.addr
    assert backend["kv_version"] == 2
    assert backend["secret_path"] == f"secret/data/{sub}"
    assert backend["metadata_path"] == f"secret/metadata/{sub}"
    assert backend["auth_method"] == "TOKEN"
    assert backend["token_renewable"] is True
    ttl = int(backend["token_ttl"].rstrip("s"))
    assert 3000 < ttl <= 3600
    text = inst.cli("status", "-vv")
    for output in (result.stdout + result.stderr, text.stdout + text.stderr):
        assert token.encode() not in output
        assert token.split(".")[-1].encode() not in output
    assert b"token_ttl" in text.stdout and bao_server.addr.encode() in text.stdout


def test_static_token_denied_gives_eacces_and_says_why(tmp_path: Path, bao_server: BaoServer) -> None:
    sub = unique()
    bao_server.cli("kv", "put", "-mount=secret", f"{sub}/s", "value=v")
    # a valid token whose policy lets it list the prefix but not read the secrets
    policy = f'path "secret/metadata/{sub}/*" {{ capabilities = ["list", "read"] }}'
    bao_server.ok("PUT", f"sys/policies/acl/{sub}", json={"policy": policy})
    token = bao_server.ok("POST", "auth/token/create", json={"policies": [sub], "ttl": "1h"})["auth"]["client_token"]
    inst = vault_instance(tmp_path, bao_server, sub, ARCHESTRA_HASHICORP_VAULT_TOKEN=token)
    with mounted(inst, tmp_path / "mnt") as m:
        assert os.listdir(m.path) == ["s"]
        expect_errno(errno.EACCES, (m.path / "s").read_bytes)
        expect_errno(errno.EACCES, (m.path / "s").read_bytes)
        log = m.log.read_text()
    assert "static token" in log and "never replaced" in log
    assert log.count("never replaced") == 1  # said once, not at every request
    assert token not in log
    got = inst.cli("get", "s", check=False)
    assert got.returncode == EXIT_REFUSED


# ----- Vault down ------------------------------------------------------------------------------------


def timed_read(path: Path) -> tuple[float, int | None]:
    """Read with `cat` in a subprocess (so a hang cannot hang the test); seconds taken and errno."""
    start = time.monotonic()
    result = subprocess.run(["cat", str(path)], capture_output=True, timeout=60, check=False)
    took = time.monotonic() - start
    if result.returncode == 0:
        return took, None
    stderr = result.stderr.decode()
    return took, errno.EIO if "Input/output error" in stderr else -1


def test_vault_down_gives_eio_within_the_timeout(tmp_path: Path, fresh_bao: BaoServer) -> None:
    sub = unique()
    fresh_bao.cli("kv", "put", "-mount=secret", f"{sub}/s", "value=up")
    fresh_bao.cli("kv", "put", "-mount=secret", f"{sub}/t", "value=up")
    fresh_bao.cli("kv", "put", "-mount=secret", f"{sub}/u", "value=up")
    inst = vault_instance(tmp_path, fresh_bao, sub, SECRETFS_TIMEOUT="1")
    with mounted(inst, tmp_path / "mnt") as m:
        assert (m.path / "s").read_bytes() == b"up"
        # frozen: connections are accepted but never answered, so only the timeout ends a request
        # (t was never read, so no cached value can be served)
        os.kill(fresh_bao.proc.pid, signal.SIGSTOP)
        try:
            took, code = timed_read(m.path / "t")
        finally:
            os.kill(fresh_bao.proc.pid, signal.SIGCONT)
        assert code == errno.EIO
        assert took < 8, f"a read against a frozen Vault took {took:.1f}s with a 1s timeout"
        # gone: connections are refused (u was never read, so no cached value can be served)
        fresh_bao.stop()
        took, code = timed_read(m.path / "u")
        assert code == errno.EIO
        assert took < 5
        assert "Vault" in m.log.read_text()


def test_a_frozen_vault_does_not_serialize_readers(tmp_path: Path, fresh_bao: BaoServer) -> None:
    """Issue 10, finding 3: 40 parallel `cat`s of never-read secrets in one directory against a frozen
    OpenBao each get EIO within the timeout (they were served one at a time: the last after 200 s)."""
    sub = unique()
    fresh_bao.cli("kv", "put", "-mount=secret", f"{sub}/seen", "value=up")
    for i in range(40):
        fresh_bao.cli("kv", "put", "-mount=secret", f"{sub}/dir/s{i:02d}", "value=up")
    inst = vault_instance(tmp_path, fresh_bao, sub, SECRETFS_TIMEOUT="2")
    with mounted(inst, tmp_path / "mnt") as m:
        assert (m.path / "seen").read_bytes() == b"up"
        os.kill(fresh_bao.proc.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            procs = [
                subprocess.Popen(
                    ["cat", str(m.path / "dir" / f"s{i:02d}")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                for i in range(40)
            ]
            codes = [proc.wait(timeout=120) for proc in procs]
            took = time.monotonic() - start
        finally:
            os.kill(fresh_bao.proc.pid, signal.SIGCONT)
        assert all(code != 0 for code in codes)
        # Each read waits for its own backend request (the 2 s timeout, a retry at most), not for
        # the 39 others: serialized, 40 reads would take 80 s or more.
        assert took < 20, f"40 parallel reads against a frozen Vault took {took:.1f}s with a 2s timeout"
