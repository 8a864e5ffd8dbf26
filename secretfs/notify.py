"""The systemd notification protocol (sd_notify): READY=1, STOPPING=1 and STATUS= to $NOTIFY_SOCKET.

One datagram per message on an AF_UNIX socket; a socket name starting with "@" is in the abstract
namespace. Without $NOTIFY_SOCKET (not started by systemd with Type=notify) every call is a no-op.
Messages never carry secret values.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

ENV_SOCKET = "NOTIFY_SOCKET"


def socket_address(raw: str) -> str | bytes | None:
    """The address to send to, from $NOTIFY_SOCKET ("/path" or "@abstract"); None if unusable."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    # systemd also knows "vsock:" addresses (VMs); secretfs does not run there.
    return None


def send(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send "KEY=value" fields as one message; True if a listener was told, False if there is none."""
    raw = (os.environ if env is None else env).get(ENV_SOCKET, "")
    if not raw:
        return False
    address = socket_address(raw)
    if address is None:
        log.warning("ignoring NOTIFY_SOCKET %r: not a path or an abstract socket name", raw)
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("could not notify the service manager at %s: %s", raw, exc.strerror or exc)
        return False
    return True


def ready(status: str) -> bool:
    return send("READY=1", f"STATUS={status}")


def stopping(status: str) -> bool:
    return send("STOPPING=1", f"STATUS={status}")


def status(text: str) -> bool:
    return send(f"STATUS={text}")
