"""Which Vault node a request goes to, and what an answer says about the active node.

A Vault or OpenBao cluster in HA mode has one active node; the others are standbys. A standby
forwards a request to the active node over the cluster port, or answers ``307`` with the active
node's ``api_addr`` when the client sends ``X-Vault-No-Request-Forwarding`` (or when forwarding
fails); since OpenBao 2.5 it also answers read-only requests itself, from its Raft replica,
which may lag the active node by a few milliseconds. During an election there is no active
node: standbys answer ``500`` ("active cluster node not found") to what they cannot serve.

:class:`NodeRouter` keeps the nodes (the configured addresses, plus the ``api_addr`` of an active
node learned from a redirect or named by a standby), the one believed active (it asks them:
``sys/leader``), the ones that failed recently, and the
state that :mod:`engine.metrics` exports: whether Vault answered the last call, and how many
times the active node changed. :class:`RoutingAdapter` is the hvac adapter that sends each
request to the node the router chose for the calling thread, adds the no-forwarding header
when asked, and turns a redirect into :class:`NodeRedirect` instead of following it. Needs
``hvac``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.parse
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import hvac.adapters
import requests

from ..locks import fork_safe_lock
from .failures import redact_url

__all__ = ["NO_FORWARDING_HEADER", "NodeRedirect", "NodeRouter", "RouterStatus",
           "RoutingAdapter", "live_routers"]

NO_FORWARDING_HEADER = "X-Vault-No-Request-Forwarding"
MAX_NODES = 16  # configured plus learned; a redirect loop cannot grow the list without bound
DOWN_FOR = 1.0  # seconds a node that refused or dropped a connection is tried last


class NodeRedirect(Exception):
    """A node answered with a redirect (a standby naming the active node). Carries the target
    URL only; the request is never followed automatically, so the router learns the node."""

    def __init__(self, location: str) -> None:
        super().__init__("redirect")
        self.location = location


@dataclass(frozen=True)
class RouterStatus:
    """What :mod:`engine.metrics` exports for one connection.

    Attributes:
        nodes: the nodes' addresses, as they may be shown (no credentials).
        up: whether the last call (or probe) reached a node that did the work; None before
            the first one.
        leader_changes: times the active node was seen to change (after the first one found).
        last_contact: ``time.monotonic()`` of the last call that Vault answered, or 0.
    """

    nodes: tuple[str, ...]
    up: bool | None
    leader_changes: int
    last_contact: float


_ROUTERS: "weakref.WeakSet[NodeRouter]" = weakref.WeakSet()


def live_routers() -> list["NodeRouter"]:
    """The routers of every open connection in this process (the metrics collector reads them)."""
    return list(_ROUTERS)


def _base_of(url: str, prefix: str) -> str | None:
    """The node's base address in a redirect's ``Location`` (the part before ``<prefix>/v1/``)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    path = parts.path
    cut = path.find("/v1/")
    if cut < 0:
        return None
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path[:cut], "", ""))


class NodeRouter:
    """The nodes of one connection and the one believed active.

    Args:
        addresses: the configured base addresses (checked, without a trailing ``/``).
    """

    def __init__(self, addresses: list[str]) -> None:
        self._nodes = list(addresses)
        self._shown = [redact_url(a) for a in addresses]
        self._configured = len(addresses)
        self._leader: int | None = None
        self._known_leader: str | None = None  # the address last seen active
        self._down_until = [0.0] * len(addresses)
        self._lock = fork_safe_lock()
        self._local = threading.local()
        self.leader_changes = 0
        self.confirmed_at = 0.0  # when the active node last said so itself (sys/leader)
        self.up: bool | None = None
        self.last_contact = 0.0
        self.prober: Any = None  # set by the connection: a callable() -> bool
        self.discovered_at = 0.0  # when discover() last asked the nodes (0: never)
        self._discovery = fork_safe_lock()
        _ROUTERS.add(self)

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def several(self) -> bool:
        """True when more than one node was configured (an HA cluster addressed node by node)."""
        return self._configured > 1

    def shown(self, index: int) -> str:
        """Node ``index``'s address as messages may show it (no credentials)."""
        return self._shown[index]

    @property
    def leader(self) -> int | None:
        """The index of the node believed active, or None (unknown: an election, or not asked)."""
        return self._leader

    def status(self) -> RouterStatus:
        """What the metrics export (see :class:`RouterStatus`)."""
        return RouterStatus(tuple(self._shown[:self._configured]), self.up, self.leader_changes,
                            self.last_contact)

    # ---- the calling thread's node ----

    @contextlib.contextmanager
    def pinned(self, index: int, *, no_forward: bool = False) -> Iterator[None]:
        """Within the block, the calling thread's requests go to node ``index`` (and carry
        :data:`NO_FORWARDING_HEADER` when ``no_forward``)."""
        previous = getattr(self._local, "route", None)
        self._local.route = (index, no_forward)
        try:
            yield
        finally:
            self._local.route = previous

    def route(self) -> tuple[str, bool]:
        """(base address, no_forward) for the calling thread's next request."""
        route = getattr(self._local, "route", None)
        if route is None:
            return self._nodes[self._leader or 0], False
        return self._nodes[route[0]], route[1]

    # ---- choosing ----

    def choose(self, tried: set[int]) -> int:
        """The node for the next try: the active one if known and not failing, else the first
        node after it that is neither failing nor already ``tried`` in this round, else the
        one that failed longest ago."""
        now = time.monotonic()
        with self._lock:
            n = len(self._nodes)
            start = self._leader if self._leader is not None else 0
            order = [(start + k) % n for k in range(n)]
            for i in order:
                if i not in tried and self._down_until[i] <= now:
                    return i
            for i in order:
                if i not in tried:
                    return i
            return min(order, key=lambda i: self._down_until[i])

    # ---- what answers say ----

    def answered(self, index: int) -> None:
        """Node ``index`` answered a call (successfully or with a definite refusal)."""
        self.up = True
        self.last_contact = time.monotonic()
        with self._lock:
            self._down_until[index] = 0.0

    def unreachable(self, index: int) -> None:
        """Node ``index`` refused, dropped or timed out a connection, or answered 5xx: tried
        last for a while, and no longer taken for the active node."""
        with self._lock:
            self._down_until[index] = time.monotonic() + DOWN_FOR
            if self._leader == index:
                self.confirmed_at = 0.0
                self._leader = None

    def unavailable(self) -> None:
        """A call gave up: Vault is down as far as this process can tell."""
        self.up = False

    def redirected(self, location: str) -> int | None:
        """A node redirected to ``location``: its node becomes the active one (learned and added
        when it is not configured). Returns its index, or None for an unusable location."""
        prefix = urllib.parse.urlsplit(self._nodes[0]).path
        base = _base_of(location, prefix)
        if base is None:
            return None
        return self._found_active(base, said_itself=False)

    def learn(self, address: str) -> int | None:
        """The index of ``address`` (an ``api_addr`` a node named), added when new (up to
        :data:`MAX_NODES`); None for an unusable one."""
        prefix = urllib.parse.urlsplit(self._nodes[0]).path
        base = _base_of(address.rstrip("/") + "/v1/", prefix)
        if base is None:
            return None
        with self._lock:
            index = self._index_of(base)
            if index is None and len(self._nodes) < MAX_NODES:
                self._nodes.append(base)
                self._shown.append(redact_url(base))
                self._down_until.append(0.0)
                index = len(self._nodes) - 1
            return index

    def found_active(self, index: int) -> None:
        """Node ``index`` said it is the active one (``sys/leader``)."""
        self._found_active(self._nodes[index], said_itself=True)
        self.confirmed_at = time.monotonic()

    def is_down(self, index: int) -> bool:
        """True while node ``index`` counts as failed (see :meth:`unreachable`)."""
        return self._down_until[index] > time.monotonic()

    def _found_active(self, base: str, said_itself: bool) -> int | None:
        with self._lock:
            index = self._index_of(base)
            if index is None:
                if len(self._nodes) >= MAX_NODES:
                    return None
                self._nodes.append(base)
                self._shown.append(redact_url(base))
                self._down_until.append(0.0)
                index = len(self._nodes) - 1
            if said_itself:
                self._down_until[index] = 0.0
            elif self._down_until[index] > time.monotonic():
                return index  # a standby still names the node that just failed: an election
            if self._leader != index:
                self.confirmed_at = 0.0
            self._leader = index
            if self._known_leader is not None and self._known_leader != base:
                self.leader_changes += 1
            self._known_leader = base
            return index

    def _index_of(self, base: str) -> int | None:
        wanted = base.rstrip("/").lower()
        for i, node in enumerate(self._nodes):
            if node.rstrip("/").lower() == wanted:
                return i
        return None

    def discover(self, ask: Callable[[int], Any], *, force: bool = False) -> int | None:
        """Asks the nodes which one is active (``ask(index)`` returns node ``index``'s answer
        to ``sys/leader``, or raises), then the active node they name if it is not among them,
        and follows the answer. One thread at a time, and not more than every 100 ms unless
        ``force``. Returns the active node's index, or None (an election, or no answer)."""
        if not self._discovery.acquire(blocking=force):
            return self._leader
        if not force and time.monotonic() - self.discovered_at < 0.1:
            self._discovery.release()
            return self._leader
        try:
            asked: set[int] = set()
            named: list[str] = []
            order = sorted(range(len(self._nodes)), key=lambda i: i != self._leader)
            while order:
                index = order.pop(0)
                asked.add(index)
                try:
                    answer = ask(index)
                except Exception:  # a node that does not answer is simply not the active one
                    self.unreachable(index)
                    continue
                if not isinstance(answer, dict):
                    continue
                if answer.get("is_self") is True or answer.get("ha_enabled") is False:
                    self.found_active(index)  # the active node, or a server on its own
                    return index
                if isinstance(answer.get("leader_address"), str) and answer["leader_address"]:
                    named.append(answer["leader_address"])
                if not order:  # then the active node the others name, if it is new
                    for address in named:
                        learned = self.learn(address)
                        if learned is not None and learned not in asked and \
                                not self.is_down(learned):
                            order.append(learned)
                            break
            return None
        finally:
            self.discovered_at = time.monotonic()
            self._discovery.release()

    def close(self) -> None:
        """The connection closed: no longer exported by :mod:`engine.metrics`."""
        _ROUTERS.discard(self)
        self.prober = None

    def probe(self) -> bool | None:
        """Asks the nodes which one is active (through the connection's prober); sets and
        returns :attr:`up`. None when no prober is attached."""
        if self.prober is None:
            return None
        self.up = bool(self.prober())
        return self.up


class RoutingAdapter(hvac.adapters.JSONAdapter):
    """hvac's JSON adapter, sending each request to the node its :class:`NodeRouter` chose for
    the calling thread. Redirects are not followed: they raise :class:`NodeRedirect`, so that
    the router learns the active node and a request that changes state is sent exactly where
    the caller decides.

    Args:
        router: the router (keyword-only; the other arguments are hvac's).
    """

    def __init__(self, *args: Any, router: NodeRouter, **kwargs: Any) -> None:
        self._router = router
        kwargs["allow_redirects"] = False
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def base_uri(self) -> str:
        return self._router.route()[0]

    @base_uri.setter
    def base_uri(self, value: str) -> None:
        pass  # the router owns the addresses; hvac sets this once in __init__

    def request(self, method: str, url: str, headers: dict | None = None,
                raise_exception: bool = True, **kwargs: Any) -> Any:
        headers = dict(headers or {})
        if self._router.route()[1]:
            headers[NO_FORWARDING_HEADER] = "true"
        result = super().request(method, url, headers=headers, raise_exception=raise_exception,
                                 **kwargs)
        if isinstance(result, requests.Response) and result.is_redirect:
            location = result.headers.get("Location", "")
            result.close()
            raise NodeRedirect(location)
        return result
