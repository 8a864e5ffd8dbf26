"""A real nginx serving TLS from certificates in a secretfs mount, reloaded by an on-change action.

Twenty rotations, each one `secretfs put tls/cert=... tls/key=...` (one transaction): the mount's
action runs `nginx -s reload`, and nginx serves the new certificate. Checked per rotation: the new
certificate is served within 10 s; once it is, every one of 20 handshakes serves it (no old
certificate after the reload); nginx logs no failed reload and its master stays the same process.
At the end: exactly one reload per rotation, each action run logged as a success. In both cache
modes; the action comes from an actions file, and a flag action runs beside it.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secretfs import render
from secretfs.config import load_settings
from secretfs.stores import open_store
from tests.support.mount import Instance, make_instance, mounted
from tests.support.wait import wait_until

pytestmark = pytest.mark.mount

ROTATIONS = 20
HANDSHAKES = 20
NGINX_CONF = """\
daemon on;
master_process on;
worker_processes 2;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {mnt}/tls/cert;
        ssl_certificate_key {mnt}/tls/key;
        return 200 "ok\\n";
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        pytest.skip("nginx is not installed: scripts/bootstrap --test installs Debian's nginx package")
    return found


@dataclass
class Pair:
    cert: Path
    key: Path
    der: bytes  # the certificate, as a handshake shows it


def make_pairs(directory: Path, count: int) -> list[Pair]:
    """count self-signed EC certificates (CN=rotation-N) and their keys, as PEM files."""
    directory.mkdir()
    now = datetime.datetime.now(datetime.UTC)
    pairs = []
    for number in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"rotation-{number}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        cert_file, key_file = directory / f"cert{number}.pem", directory / f"key{number}.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        pairs.append(Pair(cert_file, key_file, cert.public_bytes(serialization.Encoding.DER)))
    return pairs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def served(port: int) -> bytes:
    """The certificate of one fresh TLS handshake, as DER."""
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", port), timeout=5))


def first_served(port: int) -> bytes | None:
    """served(port), or None while nginx does not answer yet."""
    try:
        return served(port)
    except OSError:
        return None


def which(pairs: list[Pair], der: bytes) -> int | None:
    """The rotation whose certificate this is."""
    return next((number for number, pair in enumerate(pairs) if pair.der == der), None)


def workers(master: int) -> set[int]:
    """The running children of nginx's master: its worker processes."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == master and fields[0] not in ("Z", "X"):
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def put(instance: Instance, pair: Pair, number: int) -> None:
    """Store the pair in one transaction: by `secretfs put` (odd rotations), or (even ones) by writing
    to the database as another program would, without telling the mounts (they learn it from the
    store's watcher, and the action refreshes the mount before it runs)."""
    if number % 2:
        instance.cli("put", f"tls/cert={pair.cert}", f"tls/key={pair.key}")
        return
    store = open_store(load_settings(instance.env))
    try:
        store.write_many({f"tls/{part}": render.parse(getattr(pair, part).read_bytes()) for part in ("cert", "key")})
    finally:
        store.close()


@dataclass
class Nginx:
    binary: str
    conf: Path
    error_log: Path
    pid_file: Path
    port: int

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "-c", str(self.conf), "-e", str(self.error_log), *args]

    def master(self) -> int:
        return int(self.pid_file.read_text().strip())


@pytest.fixture
def nginx_dir(tmp_path: Path) -> Iterator[Path]:
    """nginx's directory; whatever nginx was started from it is stopped at the end."""
    directory = tmp_path / "nginx"
    directory.mkdir()
    yield directory
    pid_file = directory / "nginx.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().strip())
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not alive(pid), 10, message=f"nginx {pid} did not stop")


@pytest.mark.parametrize("cache_mode", ["kernel", "direct"])
def test_nginx_serves_each_rotated_certificate_after_its_reload(
    tmp_path: Path, nginx_dir: Path, cache_mode: str
) -> None:
    binary = nginx_binary()
    pairs = make_pairs(tmp_path / "pairs", ROTATIONS + 1)
    instance = make_instance(tmp_path)
    put(instance, pairs[0], 1)
    mnt = tmp_path / "mnt"
    nginx = Nginx(binary, nginx_dir / "nginx.conf", nginx_dir / "error.log", nginx_dir / "nginx.pid", free_port())
    nginx.conf.write_text(NGINX_CONF.format(tmp=nginx_dir, port=nginx.port, mnt=mnt))
    actions = tmp_path / "actions.toml"
    command = ", ".join(f'"{arg}"' for arg in nginx.argv("-s", "reload"))
    actions.write_text(f'[[action]]\nsecrets = ["tls/*"]\nexec = [{command}]\ndebounce = 0.3\nmin_interval = 0\n')
    flag_marker = tmp_path / "flag-action.ran"
    with mounted(
        instance,
        mnt,
        "-v",
        f"--cache-mode={cache_mode}",
        "--actions",
        str(actions),
        "--on-change-exec",
        f"tls/key=touch {flag_marker}",
    ) as mount:
        started = subprocess.run(nginx.argv(), capture_output=True, text=True, check=False)
        assert started.returncode == 0, started.stderr
        master = wait_until(lambda: nginx.pid_file.exists() and nginx.master(), 10)
        wait_until(lambda: first_served(nginx.port) == pairs[0].der, 10, message="nginx does not serve the first pair")
        for number, pair in enumerate(pairs[1:], 1):
            before = workers(master)
            put(instance, pair, number)

            def failed(number: int = number) -> str:
                return (
                    f"rotation {number}: nginx did not finish a reload to the new certificate; "
                    f"nginx: {nginx.error_log.read_text()[-3000:]} mount: {mount.log.read_text()[-3000:]}"
                )

            # The reload is done once the workers of the previous configuration are gone: nginx
            # starts the new workers ~100 ms before it tells the old ones to quit, and in between
            # either may take a connection.
            wait_until(
                lambda pair=pair, before=before: (
                    served(nginx.port) == pair.der  # type: ignore[misc]
                    and not workers(master) & before
                ),
                10,
                message=failed,
            )
            seen = [which(pairs, served(nginx.port)) for _ in range(HANDSHAKES)]
            assert seen == [number] * HANDSHAKES, (
                f"rotation {number}: after the reload, handshakes served the certificates of rotations {seen}; "
                f"nginx: {nginx.error_log.read_text()[-3000:]}"
            )
            assert alive(master) and nginx.master() == master
        errors = [line for line in nginx.error_log.read_text().splitlines() if "[emerg]" in line or "[alert]" in line]
        assert errors == []
        reloads = nginx.error_log.read_text().count("(SIGHUP) received")
        assert reloads == ROTATIONS
        assert flag_marker.exists()
        log = mount.log.read_text()
    action_lines = [line for line in log.splitlines() if "action 1 (exec nginx on tls/*)" in line]
    assert len(action_lines) == ROTATIONS, log
    assert all("exit status 0" in line for line in action_lines), log
    assert "WARNING: action" not in log
