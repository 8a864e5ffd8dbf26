"""Putting one mount together: store -> value cache -> view -> nodes and coherence -> FUSE adapter.

This is the one place that decides, from the mount options, how the parts are wired.
"""

from __future__ import annotations

from secretfs.cache import CachingStore
from secretfs.coherence import Coherence
from secretfs.freshness import FreshnessPolicy
from secretfs.fuse_ops import SecretFS
from secretfs.guard import Guard, GuardedFS
from secretfs.nodes import Nodes
from secretfs.stores.base import Store
from secretfs.view import View, ViewOptions


def build_operations(
    store: Store, view_options: ViewOptions, policy: FreshnessPolicy, guard: Guard | None = None
) -> SecretFS:
    """The FUSE operations for one mount over an opened store (with a guard: policy and audit log)."""
    cache = CachingStore(store, ttl=policy.cache_ttl, max_stale=policy.max_stale)
    view = View(cache, view_options)
    coherence = Coherence(view, cache, Nodes(), policy)
    if guard is None:
        return SecretFS(coherence)
    if guard.policy is not None:
        access, prefix = guard.policy, guard.prefix
        view.attr_override = access.chained(getattr(view, "attr_override", None), prefix)
    return GuardedFS(coherence, guard)
