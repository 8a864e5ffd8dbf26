"""What a mount does when a value really changes: one change feed, and what listens to it.

The feed (secretfs.changes) reads the store itself, so it sees every change, whoever made it and
whether or not anybody read the secret since the mount started. It is told to look by the store's
own watcher (SQLite file events, PostgreSQL notifications), by the control socket (the CLI and the
other mounts of this host, through coherence), and otherwise polls: every `--cache-ttl` for a store
that cannot watch (Vault), every `max_stale` as a safety net for one that can.

Its listeners: the announcer (inotify events, on a writable mount) and the on-change actions.
Both settle the mount on the new values first, so what they trigger reads them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from secretfs.actions import Action, ActionRunner, attach
from secretfs.announce import Announcer
from secretfs.changes import ChangeFeed
from secretfs.coherence import Coherence
from secretfs.errors import BackendUnavailable
from secretfs.freshness import FreshnessPolicy
from secretfs.stores.base import Store

log = logging.getLogger(__name__)

MIN_POLL = 1.0  # seconds between full checks of a store that cannot watch, at the least


def poll_interval(store: Store, freshness: FreshnessPolicy) -> float:
    """How often the feed reads every secret without being told to."""
    if store.capabilities.watch:
        return max(freshness.max_stale, MIN_POLL)
    return max(freshness.ttl, MIN_POLL)


class Reactions:
    """The change feed of one mount, its announcer and its actions."""

    def __init__(
        self,
        store: Store,
        coherence: Coherence,
        freshness: FreshnessPolicy,
        *,
        mountpoint: Path | None,
        actions: Sequence[Action] = (),
    ) -> None:
        self.coherence = coherence
        self.feed = ChangeFeed(store, poll_interval=poll_interval(store, freshness))
        self.announcer = Announcer(mountpoint, coherence) if mountpoint is not None else None
        self._actions = tuple(actions)
        self._retry = max(freshness.ttl, MIN_POLL)
        self.runner: ActionRunner | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Listen; the baseline is read in the background (a large store takes seconds), so the
        mount does not wait for it. News that comes meanwhile is checked once it is read."""
        if self.announcer is not None:
            self.announcer.start()
            self.feed.subscribe(self.announcer.submit)
        self.runner = attach(self.feed, self._actions, prepare=self.coherence.settle)
        self.coherence.news = self.feed.hint
        self.coherence.store_news = self.feed.store_hint  # one watcher (one PostgreSQL LISTEN) per mount
        threading.Thread(target=self._prime_then_start, name="secretfs-changes-prime", daemon=True).start()

    def _prime_then_start(self) -> None:
        warned = False
        while not self._stopped.is_set():
            try:
                self.feed.prime()
            except BackendUnavailable as exc:
                if not warned:
                    log.warning("cannot read the secrets to follow their changes yet (%s); trying again", exc)
                    warned = True
                self._stopped.wait(self._retry)
                continue
            if warned:
                log.info("following changes of the secrets again")
            if not self._stopped.is_set():
                self.feed.start(watch_store=False)
            return

    def status(self) -> dict[str, Any]:
        """Counters for `secretfs status`: changes seen, files announced, each action's runs."""
        state: dict[str, Any] = {"checks": self.feed.refreshes}
        if self.announcer is not None:
            state["announced"] = self.announcer.announced
            state["announce_failures"] = self.announcer.failed
        if self.runner is not None:
            state["actions"] = self.runner.as_dict()
        return state

    def stop(self) -> None:
        """Stop listening; a running action is stopped too (within a few seconds)."""
        self._stopped.set()
        self.coherence.news = self.coherence.store_news = None
        self.feed.stop()
        if self.runner is not None:
            self.runner.stop()
        if self.announcer is not None:
            self.announcer.stop()
