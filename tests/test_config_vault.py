"""Vault mode selection: required variables, the fallback to DB with one warning, --strict, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from secretfs.config import derive_metadata_path, load_settings
from secretfs.errors import EXIT_CONFIG, ConfigError
from tests.support.mount import make_instance

ADDR = "ARCHESTRA_HASHICORP_VAULT_ADDR"
LICENSE = "ARCHESTRA_ENTERPRISE_LICENSE_ACTIVATED"
TOKEN = "ARCHESTRA_HASHICORP_VAULT_TOKEN"
METHOD = "ARCHESTRA_HASHICORP_VAULT_AUTH_METHOD"
K8S_ROLE = "ARCHESTRA_HASHICORP_VAULT_K8S_ROLE"
AWS_ROLE = "ARCHESTRA_HASHICORP_VAULT_AWS_ROLE"

FULL = {
    "ARCHESTRA_SECRETS_MANAGER": "VAULT",
    ADDR: "http://127.0.0.1:1",
    LICENSE: "true",
    TOKEN: "config-test-token-3c1d",
}

# (auth method, variables it needs besides ADDR and LICENSE)
METHODS = [("TOKEN", {TOKEN: "t"}), ("K8S", {K8S_ROLE: "app"}), ("AWS", {AWS_ROLE: "app"})]


def env_for(method: str, extra: dict[str, str], mode: str = "VAULT") -> dict[str, str]:
    return {"ARCHESTRA_SECRETS_MANAGER": mode, ADDR: "http://127.0.0.1:1", LICENSE: "true", METHOD: method, **extra}


@pytest.mark.parametrize("mode", ["VAULT", "READONLY_VAULT", "vault", "ReadOnly_Vault"])
@pytest.mark.parametrize(("method", "needs"), METHODS)
def test_complete_configuration_keeps_vault_mode(mode: str, method: str, needs: dict[str, str]) -> None:
    settings = load_settings(env_for(method, needs, mode))
    assert settings.mode == settings.mode_requested == mode.upper()
    assert settings.fallback_reason is None
    assert settings.vault is not None
    assert settings.vault.auth_method == method
    assert settings.read_only_mode is (mode.upper() == "READONLY_VAULT")


@pytest.mark.parametrize("mode", ["VAULT", "READONLY_VAULT"])
@pytest.mark.parametrize(("method", "needs"), METHODS)
def test_each_missing_variable_falls_back_to_db_naming_it(mode: str, method: str, needs: dict[str, str]) -> None:
    complete = env_for(method, needs, mode)
    for variable in [ADDR, LICENSE, *needs]:
        env = {k: v for k, v in complete.items() if k != variable}
        settings = load_settings(env)
        assert settings.mode_requested == mode
        assert settings.mode == "DB"
        assert settings.vault is None
        assert settings.missing == (variable,)
        assert settings.fallback_reason is not None
        assert variable in settings.fallback_reason
        with pytest.raises(ConfigError, match=variable):
            load_settings(env, strict=True)


def test_every_missing_variable_is_named_once() -> None:
    settings = load_settings({"ARCHESTRA_SECRETS_MANAGER": "VAULT"})
    assert settings.mode == "DB"
    assert settings.missing == (ADDR, LICENSE, TOKEN)
    for name in settings.missing:
        assert settings.fallback_reason is not None and settings.fallback_reason.count(name) == 1


def test_license_must_be_true() -> None:
    settings = load_settings({**FULL, LICENSE: "false"})
    assert settings.mode == "DB"
    assert settings.missing == (LICENSE,)


def test_token_from_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-9e2b\n")
    env = {k: v for k, v in FULL.items() if k != TOKEN}
    settings = load_settings({**env, f"{TOKEN}_FILE": str(token_file)})
    assert settings.mode == "VAULT"
    assert settings.vault is not None and settings.vault.token == "from-a-file-9e2b"
    assert "from-a-file-9e2b" not in repr(settings)


@pytest.mark.parametrize("value", ["3", "0", "v2", "two"])
def test_invalid_kv_version_is_an_error_not_a_fallback(value: str) -> None:
    with pytest.raises(ConfigError, match="KV_VERSION"):
        load_settings({**FULL, "ARCHESTRA_HASHICORP_VAULT_KV_VERSION": value})


def test_invalid_auth_method_is_an_error_not_a_fallback() -> None:
    with pytest.raises(ConfigError, match="AUTH_METHOD"):
        load_settings({**FULL, METHOD: "LDAP"})
    # even when other variables are missing
    with pytest.raises(ConfigError, match="AUTH_METHOD"):
        load_settings({"ARCHESTRA_SECRETS_MANAGER": "VAULT", METHOD: "LDAP"})


def test_defaults() -> None:
    v2 = load_settings(FULL).vault
    assert v2 is not None
    assert (v2.kv_version, v2.secret_path, v2.metadata_path) == (
        2,
        "secret/data/archestra",
        "secret/metadata/archestra",
    )
    assert v2.auth_method == "TOKEN"
    assert v2.k8s_token_path == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert (v2.k8s_mount_point, v2.aws_mount_point) == ("kubernetes", "aws")
    assert (v2.aws_region, v2.aws_sts_endpoint, v2.aws_iam_server_id) == (
        "us-east-1",
        "https://sts.amazonaws.com",
        None,
    )
    v1 = load_settings({**FULL, "ARCHESTRA_HASHICORP_VAULT_KV_VERSION": "1"}).vault
    assert v1 is not None
    assert (v1.kv_version, v1.secret_path, v1.metadata_path) == (1, "secret/archestra", None)


def test_metadata_path_derivation_and_override() -> None:
    assert derive_metadata_path("kv/data/team/app") == "kv/metadata/team/app"
    assert derive_metadata_path("a/data/b/data/c") == "a/metadata/b/data/c"
    custom = load_settings({**FULL, "ARCHESTRA_HASHICORP_VAULT_SECRET_PATH": "/ops/data/svc/"}).vault
    assert custom is not None
    assert (custom.secret_path, custom.metadata_path) == ("ops/data/svc", "ops/metadata/svc")
    override = load_settings(
        {
            **FULL,
            "ARCHESTRA_HASHICORP_VAULT_SECRET_PATH": "team/data/data/svc",
            "ARCHESTRA_HASHICORP_VAULT_SECRET_METADATA_PATH": "team/data/metadata/svc",
        }
    ).vault
    assert override is not None and override.metadata_path == "team/data/metadata/svc"


def test_timeout_from_env_and_flag() -> None:
    assert load_settings({**FULL, "SECRETFS_TIMEOUT": "1.5"}).vault.timeout == 1.5  # type: ignore[union-attr]
    assert load_settings(FULL, timeout=0.5).vault.timeout == 0.5  # type: ignore[union-attr]


# ----- through the CLI ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "needs"), METHODS)
def test_cli_fallback_warns_once_naming_the_variable(tmp_path: Path, method: str, needs: dict[str, str]) -> None:
    complete = env_for(method, needs)
    for variable in [ADDR, LICENSE, *needs]:
        env = {k: v for k, v in complete.items() if k != variable}
        inst = make_instance(tmp_path / variable, **env)
        result = inst.cli("status", "--json", check=False)
        stderr = result.stderr.decode()
        assert result.returncode == 0, stderr
        warnings = [line for line in stderr.splitlines() if "WARNING" in line]
        assert len(warnings) == 1, stderr
        assert variable in warnings[0] and "falling back to DB" in warnings[0]
        report = result.stdout.decode()
        assert '"mode": "DB"' in report and '"mode_requested": "VAULT"' in report
        assert variable in report  # the reason, in status

        strict = inst.cli("status", "--strict", check=False)
        assert strict.returncode == EXIT_CONFIG
        assert variable in strict.stderr.decode()
