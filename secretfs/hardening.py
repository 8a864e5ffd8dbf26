"""Process hardening for the mount daemon: no core dumps, no ptrace by peers, memory locked when allowed.

apply() runs early in the daemon, before any secret is read:
- prctl(PR_SET_DUMPABLE, 0): no core file, and /proc/PID/mem, ptrace and the like are refused to
  processes of the same user that lack CAP_SYS_PTRACE;
- RLIMIT_CORE 0 (soft and hard), in case something makes the process dumpable again;
- mlockall(MCL_CURRENT | MCL_FUTURE [| MCL_ONFAULT]) as a best effort, so decrypted values are never
  swapped out. It needs CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK; without either it is skipped
  (locking future mappings under a small limit would make later allocations fail), and the outcome
  is recorded for `secretfs status`.

The recorded state (state()) holds flags and error names only, never a value.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import resource
import threading
from typing import Any

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
MCL_CURRENT = 1
MCL_FUTURE = 2
MCL_ONFAULT = 4
CAP_IPC_LOCK = 14

_lock = threading.Lock()
_state: dict[str, Any] = {"applied": False}


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _errname(code: int) -> str:
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


def get_dumpable() -> int:
    """PR_GET_DUMPABLE of this process (0: not dumpable)."""
    return int(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def _has_cap_ipc_lock() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    except (OSError, ValueError):
        pass
    return False


def _mlockall() -> dict[str, Any]:
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if not _has_cap_ipc_lock() and soft != resource.RLIM_INFINITY:
        return {
            "ok": False,
            "detail": f"skipped: no CAP_IPC_LOCK and RLIMIT_MEMLOCK is {soft} bytes "
            "(grant CAP_IPC_LOCK or set LimitMEMLOCK=infinity)",
        }
    libc = _libc()
    # MCL_ONFAULT (Linux 4.4+) locks pages as they are touched instead of faulting in whole thread
    # stacks at once; older kernels answer EINVAL, and the plain flags are tried.
    for flags, label in (
        (MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT, "MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT"),
        (MCL_CURRENT | MCL_FUTURE, "MCL_CURRENT|MCL_FUTURE"),
    ):
        if libc.mlockall(flags) == 0:
            return {"ok": True, "detail": f"locked ({label})"}
        code = ctypes.get_errno()
        if code != errno.EINVAL:
            return {"ok": False, "detail": f"failed: {_errname(code)}"}
    return {"ok": False, "detail": f"failed: {_errname(errno.EINVAL)}"}


def protect_process() -> None:
    """What a command that handles values needs (put, get, watch, migrate, ...): not dumpable (no
    ptrace by the same user, no /proc/PID/mem), and no core file. Silent; the daemon uses apply()."""
    _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def apply() -> dict[str, Any]:
    """Harden this process (idempotent); return and record the outcome."""
    with _lock:
        if _state.get("applied"):
            return dict(_state)
        libc = _libc()
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_DUMPABLE, 0) failed: %s", _errname(ctypes.get_errno()))
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except (OSError, ValueError) as exc:
            log.warning("could not set RLIMIT_CORE to 0: %s", exc)
        mlock = _mlockall()
        core_soft, core_hard = resource.getrlimit(resource.RLIMIT_CORE)
        _state.clear()
        _state.update(
            {
                "applied": True,
                "dumpable": get_dumpable() != 0,
                "core_limit": core_soft,
                "core_limit_hard": core_hard,
                "mlockall": mlock,
            }
        )
        log.log(
            logging.WARNING if mlock["detail"].startswith("failed") else logging.INFO,
            "hardening: dumpable=%s, core limit=%s, mlockall %s",
            _state["dumpable"],
            core_soft,
            mlock["detail"],
        )
        return dict(_state)


def state() -> dict[str, Any]:
    """The recorded outcome of apply() ({"applied": False} before it ran)."""
    with _lock:
        return {**_state, "mlockall": dict(_state["mlockall"])} if "mlockall" in _state else dict(_state)
