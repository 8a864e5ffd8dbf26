"""Configuration: one frozen Settings object from defaults < environment < command-line flags.

The mode, the Vault fallback decision and its reasons are computed here, once. Every variable that
carries a secret is also read from ``NAME_FILE`` (a path, the Docker convention) and from
``$CREDENTIALS_DIRECTORY/NAME`` (systemd ``LoadCredential=``).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from secretfs.errors import ConfigError

Mode = Literal["DB", "VAULT", "READONLY_VAULT"]
MODES: tuple[Mode, ...] = ("DB", "VAULT", "READONLY_VAULT")
AUTH_METHODS = ("TOKEN", "K8S", "AWS")

ENV_MANAGER = "ARCHESTRA_SECRETS_MANAGER"
ENV_SECRET = "ARCHESTRA_SECRETS_ENCRYPTION_SECRET"
ENV_AUTH_SECRET = "ARCHESTRA_AUTH_SECRET"
ENV_SECRET_PREVIOUS = "ARCHESTRA_SECRETS_ENCRYPTION_SECRET_PREVIOUS"
ENV_ACCEPT_NEW_KEY = "ARCHESTRA_SECRETS_ACCEPT_NEW_ENCRYPTION_KEY"
ENV_DATABASE_URL = "ARCHESTRA_DATABASE_URL"
ENV_LICENSE = "ARCHESTRA_ENTERPRISE_LICENSE_ACTIVATED"
ENV_DATA_DIR = "SECRETFS_DATA_DIR"
ENV_ALLOW_UNSAFE_DATA_DIR = "SECRETFS_ALLOW_UNSAFE_DATA_DIR"
VAULT_PREFIX = "ARCHESTRA_HASHICORP_VAULT_"

DEFAULT_K8S_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
KEY_FILE_NAME = "encryption.secret"
DEFAULT_TIMEOUT = 5.0

log = logging.getLogger("secretfs")


class Secret(str):
    """A string whose repr never shows its content, so it cannot leak into logs or tracebacks."""

    def __repr__(self) -> str:
        return "Secret('***')"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def read_env(env: Mapping[str, str], name: str) -> str | None:
    """Read a plain variable; an empty value counts as unset."""
    value = env.get(name)
    return value if value else None


def read_secret_env(env: Mapping[str, str], name: str) -> Secret | None:
    """Read a secret-carrying variable from NAME, NAME_FILE, or $CREDENTIALS_DIRECTORY/NAME."""
    if value := env.get(name):
        return Secret(value)
    path = env.get(f"{name}_FILE")
    source = f"{name}_FILE"
    if not path and (cred_dir := env.get("CREDENTIALS_DIRECTORY")):
        candidate = Path(cred_dir) / name
        if candidate.is_file():
            path, source = str(candidate), f"credential {name}"
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {source} ({path}): {exc.strerror}") from None
    # Files written by editors or `echo` end in a newline that is not part of the secret.
    text = text.rstrip("\r\n")
    return Secret(text) if text else None


def default_data_dir(env: Mapping[str, str]) -> Path:
    """/var/lib/secretfs for root, else ${XDG_DATA_HOME:-~/.local/share}/secretfs."""
    if explicit := env.get(ENV_DATA_DIR):
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/lib/secretfs")
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local/share")
    return Path(base) / "secretfs"


@dataclass(frozen=True)
class VaultSettings:
    """Everything the Vault store needs; secrets are Secret strings."""

    addr: str
    auth_method: str = "TOKEN"
    token: Secret | None = None
    kv_version: int = 2
    secret_path: str = "secret/data/archestra"
    metadata_path: str | None = "secret/metadata/archestra"
    k8s_role: str | None = None
    k8s_token_path: str = DEFAULT_K8S_TOKEN_PATH
    k8s_mount_point: str = "kubernetes"
    aws_role: str | None = None
    aws_mount_point: str = "aws"
    aws_region: str = "us-east-1"
    aws_sts_endpoint: str = "https://sts.amazonaws.com"
    aws_iam_server_id: str | None = None
    cacert: str | None = None
    namespace: str | None = None
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class Settings:
    """The whole configuration, decided once."""

    mode_requested: Mode
    mode: Mode
    fallback_reason: str | None
    data_dir: Path
    database_url: str
    encryption_secret: Secret | None
    encryption_secret_source: str
    previous_secret: Secret | None
    accept_new_key: bool
    vault: VaultSettings | None
    timeout: float = DEFAULT_TIMEOUT
    missing: tuple[str, ...] = field(default=())

    @property
    def read_only_mode(self) -> bool:
        return self.mode == "READONLY_VAULT"

    allow_unsafe_data_dir: bool = False

    @property
    def key_file(self) -> Path:
        return self.data_dir / KEY_FILE_NAME


def parse_mode(value: str | None) -> Mode:
    """The mode named by ARCHESTRA_SECRETS_MANAGER, case-insensitively; unset means DB."""
    if not value:
        return "DB"
    upper = value.strip().upper()
    for mode in MODES:
        if mode == upper:
            return mode
    hint = " (a file's permission bits are --file-mode)" if upper.isdigit() else ""
    raise ConfigError(f"{ENV_MANAGER}={value!r} is not a mode; allowed values: {', '.join(MODES)}{hint}")


def _vault_settings(env: Mapping[str, str], timeout: float) -> tuple[VaultSettings | None, list[str]]:
    """Build VaultSettings, or return the list of missing required variables."""

    def var(suffix: str) -> str | None:
        return read_env(env, VAULT_PREFIX + suffix)

    missing: list[str] = []
    addr = var("ADDR")
    if not addr:
        missing.append(VAULT_PREFIX + "ADDR")
    if not _truthy(env.get(ENV_LICENSE)):
        missing.append(ENV_LICENSE)

    method = (var("AUTH_METHOD") or "TOKEN").strip().upper()
    if method not in AUTH_METHODS:
        raise ConfigError(f"{VAULT_PREFIX}AUTH_METHOD={method!r} is not valid; allowed: {', '.join(AUTH_METHODS)}")
    kv_raw = (var("KV_VERSION") or "2").strip()
    if kv_raw not in ("1", "2"):
        raise ConfigError(f"{VAULT_PREFIX}KV_VERSION={kv_raw!r} is not valid; allowed: 1, 2")
    kv_version = int(kv_raw)

    token = read_secret_env(env, VAULT_PREFIX + "TOKEN")
    if method == "TOKEN" and token is None:
        missing.append(VAULT_PREFIX + "TOKEN")
    k8s_role = var("K8S_ROLE")
    if method == "K8S" and not k8s_role:
        missing.append(VAULT_PREFIX + "K8S_ROLE")
    aws_role = var("AWS_ROLE")
    if method == "AWS" and not aws_role:
        missing.append(VAULT_PREFIX + "AWS_ROLE")
    if missing:
        return None, missing

    default_prefix = "secret/data/archestra" if kv_version == 2 else "secret/archestra"
    secret_path = (var("SECRET_PATH") or default_prefix).strip("/")
    metadata_path: str | None = None
    if kv_version == 2:
        metadata_path = var("SECRET_METADATA_PATH") or derive_metadata_path(secret_path)
        metadata_path = metadata_path.strip("/")
    assert addr is not None
    return (
        VaultSettings(
            addr=addr.rstrip("/"),
            auth_method=method,
            token=token,
            kv_version=kv_version,
            secret_path=secret_path,
            metadata_path=metadata_path,
            k8s_role=k8s_role,
            k8s_token_path=var("K8S_TOKEN_PATH") or DEFAULT_K8S_TOKEN_PATH,
            k8s_mount_point=var("K8S_MOUNT_POINT") or "kubernetes",
            aws_role=aws_role,
            aws_mount_point=var("AWS_MOUNT_POINT") or "aws",
            aws_region=var("AWS_REGION") or "us-east-1",
            aws_sts_endpoint=var("AWS_STS_ENDPOINT") or "https://sts.amazonaws.com",
            aws_iam_server_id=var("AWS_IAM_SERVER_ID"),
            cacert=var("CACERT"),
            namespace=var("NAMESPACE"),
            timeout=timeout,
        ),
        [],
    )


def derive_metadata_path(secret_path: str) -> str:
    """The KV v2 metadata prefix: the data prefix with its first '/data/' swapped for '/metadata/'."""
    padded = f"/{secret_path.strip('/')}/"
    if "/data/" in padded:
        padded = padded.replace("/data/", "/metadata/", 1)
    return padded.strip("/")


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    mode: str | None = None,
    database_url: str | None = None,
    data_dir: str | Path | None = None,
    strict: bool = False,
    timeout: float | None = None,
) -> Settings:
    """Build the Settings from the environment, with command-line overrides on top."""
    env = os.environ if env is None else env
    requested = parse_mode(mode if mode is not None else env.get(ENV_MANAGER))
    timeout = parse_timeout(timeout if timeout is not None else env.get("SECRETFS_TIMEOUT") or DEFAULT_TIMEOUT)
    directory = Path(data_dir) if data_dir else default_data_dir(env)

    vault: VaultSettings | None = None
    effective: Mode = requested
    reason: str | None = None
    missing: list[str] = []
    if requested != "DB":
        vault, missing = _vault_settings(env, timeout)
        if missing:
            reason = f"{requested} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not set"
            if strict:
                raise ConfigError(f"{reason} (--strict forbids falling back to DB)")
            effective = "DB"

    secret = read_secret_env(env, ENV_SECRET)
    source = ENV_SECRET
    if secret is None:
        secret = read_secret_env(env, ENV_AUTH_SECRET)
        source = ENV_AUTH_SECRET
    if secret is None:
        source = f"generated file {directory / KEY_FILE_NAME}"

    url = database_url or read_env(env, ENV_DATABASE_URL) or f"sqlite:///{directory / 'secretfs.db'}"
    return Settings(
        mode_requested=requested,
        mode=effective,
        fallback_reason=reason,
        data_dir=directory,
        database_url=url,
        encryption_secret=secret,
        encryption_secret_source=source,
        previous_secret=read_secret_env(env, ENV_SECRET_PREVIOUS),
        accept_new_key=_truthy(env.get(ENV_ACCEPT_NEW_KEY)),
        vault=vault,
        timeout=timeout,
        missing=tuple(missing),
        allow_unsafe_data_dir=_truthy(env.get(ENV_ALLOW_UNSAFE_DATA_DIR)),
    )


def parse_timeout(value: str | float) -> float:
    """A timeout in seconds: a finite number above 0 (SECRETFS_TIMEOUT, --timeout)."""
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"SECRETFS_TIMEOUT={value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"the timeout must be a finite number of seconds above 0, not {value!r}")
    return seconds


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite database URL (None for other databases and :memory:); a URL that
    cannot be parsed (a bad port, an unknown form) is a configuration error."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"invalid {ENV_DATABASE_URL} {redact_url(url)}: not a URL like sqlite:////path/db or "
            "postgresql+psycopg://user:pw@host:5432/db (is the port a number?)"
        ) from None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def redact_url(url: str) -> str:
    """A database URL with its password replaced, for status output and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


# ----- the data directory and the key file (the rules ssh applies to ~/.ssh and its keys) ----------


def make_private_dir(path: Path) -> None:
    """Create path and every missing parent with mode 0700, whatever the umask."""
    missing: list[Path] = []
    current = Path(os.path.abspath(path))
    while not os.path.lexists(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot create the directory {directory}: {exc.strerror}") from None
        os.chmod(directory, 0o700)  # the umask can only have removed bits


def check_private_path(path: Path, *, what: str, secret: bool, allow_unsafe: bool) -> bool:
    """Refuse a path that another user could have swapped or changed: one not owned by this user,
    writable by group or others, or (secret=True, a key file) readable by them. Return whether it exists.

    allow_unsafe (SECRETFS_ALLOW_UNSAFE_DATA_DIR=1) turns the refusal into a warning.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigError(f"cannot inspect the {what} {path}: {exc.strerror}") from None
    problems = []
    euid = os.geteuid()
    if st.st_uid != euid:
        problems.append(f"owned by uid {st.st_uid}, not by uid {euid}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        problems.append("writable by group or others")
    if secret and mode & 0o044:
        problems.append("readable by group or others")
    if not problems:
        return True
    message = (
        f"unsafe {what} {path} (mode {mode:04o}: {', '.join(problems)}); another user could have planted or "
        f"read it. Fix it (chown, chmod {'600' if secret else '700'}), or set {ENV_ALLOW_UNSAFE_DATA_DIR}=1 "
        "to use it anyway"
    )
    if not allow_unsafe:
        raise ConfigError(message)
    log.warning("%s: using it because %s is set", message.partition("; ")[0], ENV_ALLOW_UNSAFE_DATA_DIR)
    return True


def check_data_dir(settings: Settings) -> None:
    """Refuse an unsafe data directory (when it exists; nothing is created here)."""
    check_private_path(
        settings.data_dir, what="data directory", secret=False, allow_unsafe=settings.allow_unsafe_data_dir
    )


def read_key_file(settings: Settings) -> Secret | None:
    """The generated secret in DATA_DIR/encryption.secret, checked as ssh checks a private key; None if absent."""
    path = settings.key_file
    if not check_private_path(path, what="key file", secret=True, allow_unsafe=settings.allow_unsafe_data_dir):
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the key file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not text:
        raise ConfigError(f"the key file {path} is empty; remove it, or set {ENV_SECRET}")
    return Secret(text)


def create_key_file(settings: Settings) -> Secret:
    """Generate the secret into DATA_DIR/encryption.secret (0600, in a 0700 directory), with a notice.

    Only for a database that holds no secrets and no key canary (the caller checks): a key made for
    a database written under another key would only hide the real problem.
    """
    path = settings.key_file
    make_private_dir(path.parent)
    check_data_dir(settings)
    generated = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        existing = read_key_file(settings)  # another process generated it first
        if existing is None:
            raise ConfigError(f"the key file {path} appeared and vanished; try again") from None
        return existing
    except OSError as exc:
        raise ConfigError(f"cannot create the key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(generated + "\n")
    print(
        f"secretfs: no encryption secret was configured, so a new one was generated in {path} "
        f"(mode 0600). Back it up: without it the database cannot be decrypted. Set {ENV_SECRET} to use your own.",
        file=sys.stderr,
    )
    return Secret(generated)
