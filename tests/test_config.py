"""Configuration in DB mode: the mode variable, secret variables (NAME, NAME_FILE, credentials), the
data directory, the database URL, and secrets that never show in a repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from secretfs import config
from secretfs.config import Secret, load_settings, parse_mode, read_secret_env, redact_url
from secretfs.errors import EXIT_CONFIG, ConfigError
from tests.support.mount import Instance, base_env

ENC = "ARCHESTRA_SECRETS_ENCRYPTION_SECRET"
AUTH = "ARCHESTRA_AUTH_SECRET"


@pytest.fixture
def data_env(tmp_path: Path) -> dict[str, str]:
    return {"SECRETFS_DATA_DIR": str(tmp_path / "data")}


# ----- the mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["bogus", "DATABASE", "vault2", "READ_ONLY_VAULT", "DB,VAULT"])
def test_unknown_mode_is_an_error_naming_allowed_values(value: str, data_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={**data_env, "ARCHESTRA_SECRETS_MANAGER": value})
    message = str(info.value)
    assert "ARCHESTRA_SECRETS_MANAGER" in message
    for allowed in ("DB", "VAULT", "READONLY_VAULT"):
        assert allowed in message
    assert value in message


def test_unknown_mode_cli_exit_code(tmp_path: Path) -> None:
    instance = Instance(tmp_path / "data", base_env(tmp_path / "data", ARCHESTRA_SECRETS_MANAGER="bogus"))
    for command in (("ls",), ("status",), ("get", "x")):
        result = instance.cli(*command, check=False)
        assert result.returncode == EXIT_CONFIG == 3
        assert b"READONLY_VAULT" in result.stderr
    assert not (tmp_path / "data" / "secretfs.db").exists()


def test_unknown_mode_flag_cli_exit_code(tmp_path: Path) -> None:
    instance = Instance(tmp_path / "data", base_env(tmp_path / "data"))
    result = instance.cli("ls", "--mode", "nope", check=False)
    assert result.returncode == 3
    assert b"allowed values" in result.stderr


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("DB", "DB"),
        ("db", "DB"),
        ("Db", "DB"),
        (" db ", "DB"),
        ("vault", "VAULT"),
        ("Vault", "VAULT"),
        ("readonly_vault", "READONLY_VAULT"),
        ("ReadOnly_Vault", "READONLY_VAULT"),
        ("", "DB"),
        (None, "DB"),
    ],
)
def test_modes_case_insensitive(value: str | None, mode: str) -> None:
    assert parse_mode(value) == mode


def test_unset_mode_is_db(data_env: dict[str, str]) -> None:
    settings = load_settings(env=data_env)
    assert settings.mode == settings.mode_requested == "DB"
    assert settings.fallback_reason is None
    assert settings.vault is None


def test_lowercase_vault_mode_without_variables_falls_back(data_env: dict[str, str]) -> None:
    settings = load_settings(env={**data_env, "ARCHESTRA_SECRETS_MANAGER": "readonly_vault"})
    assert settings.mode_requested == "READONLY_VAULT"
    assert settings.mode == "DB"
    assert settings.fallback_reason is not None
    assert "ARCHESTRA_HASHICORP_VAULT_ADDR" in settings.fallback_reason


def test_mode_flag_overrides_env(data_env: dict[str, str]) -> None:
    settings = load_settings(env={**data_env, "ARCHESTRA_SECRETS_MANAGER": "bogus"}, mode="db")
    assert settings.mode == "DB"


# ----- secret variables ---------------------------------------------------------------------------


def test_name_file_form_drops_trailing_newline(tmp_path: Path, data_env: dict[str, str]) -> None:
    path = tmp_path / "enc"
    path.write_text("from-file-secret\n")
    settings = load_settings(env={**data_env, f"{ENC}_FILE": str(path)})
    assert settings.encryption_secret == "from-file-secret"
    assert settings.encryption_secret_source == ENC
    path.write_text("crlf-secret\r\n")
    assert read_secret_env({f"{ENC}_FILE": str(path)}, ENC) == "crlf-secret"


def test_name_file_keeps_inner_content(tmp_path: Path) -> None:
    path = tmp_path / "enc"
    path.write_text("  spaced secret\twith tab  \n")
    assert read_secret_env({f"{ENC}_FILE": str(path)}, ENC) == "  spaced secret\twith tab  "
    path.write_text("no-newline")
    assert read_secret_env({f"{ENC}_FILE": str(path)}, ENC) == "no-newline"


def test_name_beats_name_file(tmp_path: Path) -> None:
    path = tmp_path / "enc"
    path.write_text("from-file\n")
    assert read_secret_env({ENC: "from-env", f"{ENC}_FILE": str(path)}, ENC) == "from-env"


def test_missing_name_file_is_a_config_error(tmp_path: Path, data_env: dict[str, str]) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as info:
        load_settings(env={**data_env, f"{ENC}_FILE": str(missing)})
    assert f"{ENC}_FILE" in str(info.value)
    assert str(missing) in str(info.value)


def test_empty_values_count_as_unset(tmp_path: Path, data_env: dict[str, str]) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    settings = load_settings(env={**data_env, ENC: "", f"{AUTH}_FILE": str(empty)})
    assert settings.encryption_secret is None
    assert settings.encryption_secret_source.startswith("generated file")


def test_credentials_directory(tmp_path: Path, data_env: dict[str, str]) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / ENC).write_text("systemd-credential\n")
    settings = load_settings(env={**data_env, "CREDENTIALS_DIRECTORY": str(creds)})
    assert settings.encryption_secret == "systemd-credential"
    # NAME_FILE beats the credentials directory, and NAME beats both.
    other = tmp_path / "other"
    other.write_text("file-form\n")
    env = {**data_env, "CREDENTIALS_DIRECTORY": str(creds), f"{ENC}_FILE": str(other)}
    assert load_settings(env=env).encryption_secret == "file-form"
    assert load_settings(env={**env, ENC: "env-form"}).encryption_secret == "env-form"
    # A credentials directory without that credential is not an error.
    assert read_secret_env({"CREDENTIALS_DIRECTORY": str(creds)}, AUTH) is None


def test_encryption_secret_preferred_over_auth_secret(tmp_path: Path, data_env: dict[str, str]) -> None:
    both = load_settings(env={**data_env, ENC: "preferred", AUTH: "seed-name"})
    assert both.encryption_secret == "preferred"
    assert both.encryption_secret_source == ENC
    auth_only = load_settings(env={**data_env, AUTH: "seed-name"})
    assert auth_only.encryption_secret == "seed-name"
    assert auth_only.encryption_secret_source == AUTH
    path = tmp_path / "enc"
    path.write_text("preferred-file\n")
    file_form = load_settings(env={**data_env, f"{ENC}_FILE": str(path), AUTH: "seed-name"})
    assert file_form.encryption_secret == "preferred-file"


def test_previous_secret(data_env: dict[str, str]) -> None:
    settings = load_settings(env={**data_env, ENC: "new", "ARCHESTRA_SECRETS_ENCRYPTION_SECRET_PREVIOUS": "old"})
    assert settings.previous_secret == "old"
    assert load_settings(env=data_env).previous_secret is None


def test_generated_key_source_and_path(tmp_path: Path) -> None:
    settings = load_settings(env={"SECRETFS_DATA_DIR": str(tmp_path / "d")})
    assert settings.encryption_secret is None
    assert settings.key_file == tmp_path / "d" / "encryption.secret"
    assert str(settings.key_file) in settings.encryption_secret_source


# ----- data directory and database URL ------------------------------------------------------------


def test_data_dir_for_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("secretfs.config.os.geteuid", lambda: 0)
    env = {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    assert config.default_data_dir(env) == Path("/var/lib/secretfs")
    assert load_settings(env=env).database_url == "sqlite:////var/lib/secretfs/secretfs.db"


def test_data_dir_for_users(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("secretfs.config.os.geteuid", lambda: 1000)
    home = tmp_path / "home"
    assert config.default_data_dir({"HOME": str(home)}) == home / ".local/share/secretfs"
    assert config.default_data_dir({"HOME": str(home), "XDG_DATA_HOME": str(tmp_path / "xdg")}) == (
        tmp_path / "xdg" / "secretfs"
    )
    assert config.default_data_dir({"HOME": str(home), "XDG_DATA_HOME": ""}) == home / ".local/share/secretfs"
    settings = load_settings(env={"HOME": str(home)})
    assert settings.data_dir == home / ".local/share/secretfs"
    assert settings.key_file == home / ".local/share/secretfs/encryption.secret"


def test_explicit_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("secretfs.config.os.geteuid", lambda: 0)
    assert config.default_data_dir({"SECRETFS_DATA_DIR": str(tmp_path / "x")}) == tmp_path / "x"
    settings = load_settings(env={"SECRETFS_DATA_DIR": str(tmp_path / "x")}, data_dir=tmp_path / "flag")
    assert settings.data_dir == tmp_path / "flag"


def test_database_url_default_and_overrides(tmp_path: Path) -> None:
    env = {"SECRETFS_DATA_DIR": str(tmp_path / "d")}
    assert load_settings(env=env).database_url == f"sqlite:///{tmp_path / 'd' / 'secretfs.db'}"
    pg = "postgresql+psycopg://u:pw@db.example:5432/archestra"
    assert load_settings(env={**env, "ARCHESTRA_DATABASE_URL": pg}).database_url == pg
    assert load_settings(env={**env, "ARCHESTRA_DATABASE_URL": ""}).database_url.startswith("sqlite:///")
    assert load_settings(env={**env, "ARCHESTRA_DATABASE_URL": pg}, database_url="sqlite:///x.db").database_url == (
        "sqlite:///x.db"
    )


def test_redact_url_hides_password() -> None:
    redacted = redact_url("postgresql+psycopg://user:s3cr3t-pw@db.example:5432/archestra")
    assert "s3cr3t-pw" not in redacted
    assert "user" in redacted
    assert "db.example" in redacted


# ----- secrets never shown ------------------------------------------------------------------------


def test_secret_repr_hides_value(tmp_path: Path) -> None:
    value = "very-secret-value-91c2"
    s = Secret(value)
    assert s == value  # usable as the string it is
    assert value not in repr(s)
    assert value not in f"{s!r}"
    assert value not in repr([s, {"k": s}])
    path = tmp_path / "prev"
    path.write_text("previous-secret-value-77\n")
    settings = load_settings(
        env={
            "SECRETFS_DATA_DIR": str(tmp_path),
            ENC: value,
            "ARCHESTRA_SECRETS_ENCRYPTION_SECRET_PREVIOUS_FILE": str(path),
        }
    )
    assert isinstance(settings.encryption_secret, Secret)
    assert value not in repr(settings)
    assert "previous-secret-value-77" not in repr(settings)
