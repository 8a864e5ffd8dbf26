"""One HTTP call to Vault: the hvac adapter, per-request token, timeout, and the error mapping.

The adapter never holds a token: each call passes the token it means to use, so a concurrent
re-login cannot change the token under a request. hvac and requests exceptions become secretfs
exceptions here and nowhere else; messages name the path, never a value or a credential.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import hvac
import hvac.exceptions
import requests
import requests.adapters

from secretfs.config import VaultSettings
from secretfs.errors import AccessDenied, BackendUnavailable, NotFound, VaultRejected

__all__ = ["VaultRejected", "api_path", "call", "make_adapter"]


def make_adapter(settings: VaultSettings) -> Any:
    """A JSON adapter with no token, the configured timeout, CA bundle and namespace, and no retries."""
    session = requests.Session()
    # No retries (a down server must fail within one timeout); enough pooled connections for FUSE threads.
    http = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
    session.mount("http://", http)
    session.mount("https://", http)
    return hvac.adapters.JSONAdapter(
        base_uri=settings.addr,
        token=None,
        verify=settings.cacert or True,
        timeout=settings.timeout,
        namespace=settings.namespace,
        session=session,
    )


def api_path(*parts: str) -> str:
    """'/v1/' + the parts joined by '/', each segment percent-encoded (names may hold '%', '?', ' ')."""
    segments: list[str] = []
    for part in parts:
        segments.extend(s for s in part.split("/") if s)
    return "/v1/" + "/".join(urllib.parse.quote(s, safe="") for s in segments)


def call(
    adapter: Any,
    method: str,
    path: str,
    *,
    token: str | None,
    what: str,
    json: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """Send one request; return the JSON body (None when there is none) or raise a secretfs error."""
    send_headers = dict(headers or {})
    if token:
        send_headers["X-Vault-Token"] = token
    try:
        response = adapter.request(method, path, headers=send_headers, json=json)
    except hvac.exceptions.InvalidPath:
        raise NotFound(f"Vault has nothing at {what}") from None
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
        raise AccessDenied(f"Vault denied {what} (403 permission denied)") from None
    except (
        hvac.exceptions.VaultDown,
        hvac.exceptions.InternalServerError,
        hvac.exceptions.BadGateway,
        hvac.exceptions.RateLimitExceeded,
        hvac.exceptions.VaultNotInitialized,
    ) as exc:
        raise BackendUnavailable(f"Vault unavailable while {what} ({type(exc).__name__})") from None
    except hvac.exceptions.VaultError as exc:
        detail = "; ".join(str(e) for e in (exc.errors or []))[:200] if isinstance(exc.errors, list) else ""
        raise VaultRejected(f"Vault rejected {what} ({type(exc).__name__}{': ' + detail if detail else ''})") from None
    except requests.exceptions.Timeout:
        raise BackendUnavailable(f"Vault did not answer {what} in time") from None
    except requests.exceptions.RequestException as exc:
        raise BackendUnavailable(f"Vault unreachable while {what} ({type(exc).__name__})") from None
    if isinstance(response, dict):
        return response
    return None
