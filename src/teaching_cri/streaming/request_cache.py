"""The streaming server's request cache, sans I/O: a token for each Exec,
Attach or PortForward request, redeemed once at ``/cri/<method>/<token>``.

The kubelet does not stream through the CRI's gRPC connection: Exec and
Attach return a URL, and the kubelet (or kubectl through it) connects there.
The request itself waits in this cache under a random token until then,
as in iSulad's ``RequestCache`` and k8s.io/kubelet's ``requestCache``: a
token lives one minute, is used once, and at most 1000 wait at a time (a
client that asks and never comes must not fill memory). A token opens at most
one session: the streaming server claims it when it admits a connection
(:meth:`RequestCache.claim`), so a second upgrade on the same URL is refused
as "used" even before the first session has redeemed it. Nothing here does
I/O; the clock and the token source are given, so it is tested without
sockets or sleeps. One asyncio loop owns it, so it needs no lock (the seed's
``m_mutex``).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ResourceExhausted
from ..trace.tracer import decide, step

TOKEN_TTL = 60.0  # seconds: k8s.io/kubelet's CacheTTL
MAX_IN_FLIGHT = 1000  # k8s.io/kubelet's MaxInFlight
TOKEN_BYTES = 8  # k8s.io/kubelet's TokenLen
METHODS = ("exec", "attach", "portforward")


@dataclass(frozen=True)
class CachedRequest:
    method: str
    request: Any  # the ExecRequest, AttachRequest or PortForwardRequest
    expires: float


class RequestCache:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
        ttl: float = TOKEN_TTL,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.clock = clock
        self.token_bytes = token_bytes
        self.ttl = ttl
        self.max_in_flight = max_in_flight
        self._entries: OrderedDict[str, CachedRequest] = OrderedDict()
        # Tokens used already, until they would have expired: so a second use
        # is refused as "used", not as "unknown" (a clearer answer, no more).
        self._used: OrderedDict[str, float] = OrderedDict()
        # Tokens a session was admitted with and has not redeemed yet.
        self._claimed: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def insert(self, method: str, request: Any) -> str:
        """The chart's steps from ``garbage_collection`` to ``save``: a token."""
        if method not in METHODS:
            raise ValueError(f"unknown streaming method {method!r}")
        self.garbage_collection()
        if decide("cache_entry_list_overflow_1000", len(self._entries) >= self.max_in_flight):
            raise ResourceExhausted(
                f"maximum number of pending streaming requests ({self.max_in_flight}) reached"
            )
        token = self.unique_token()
        self.save(token, CachedRequest(method, request, self.clock() + self.ttl))
        return token

    @step("garbage_collection")
    def garbage_collection(self) -> None:
        """Drop the expired, oldest first (insertion order is expiry order)."""
        now = self.clock()
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            del self._entries[token]
            self._claimed.discard(token)
        while self._used and next(iter(self._used.values())) <= now:
            self._used.popitem(last=False)

    @step("unique_token")
    def unique_token(self) -> str:
        while True:
            raw = self.token_bytes(TOKEN_BYTES)
            token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
            if token not in self._entries:
                return token

    @step("save")
    def save(self, token: str, entry: CachedRequest) -> None:
        self._entries[token] = entry

    def peek(self, token: str) -> CachedRequest | None:
        """The request a token holds, left in place."""
        return self._entries.get(token)

    def check(self, method: str, token: str) -> str:
        """What a token is, without using it: "valid", "unknown", "expired",
        "used" or "bad method" (the streaming server's filter asks)."""
        entry = self._entries.get(token)
        if entry is None:
            return "used" if token in self._used else "unknown"
        if entry.expires <= self.clock():
            return "expired"
        if entry.method != method:
            return "bad method"
        return "used" if token in self._claimed else "valid"

    def claim(self, token: str) -> None:
        """A session was admitted with this token: no other may be. The
        request stays for that session to redeem (``consume``, or ``peek``
        then ``erase``); a session that ends first erases it."""
        if token in self._entries:
            self._claimed.add(token)

    def erase(self, token: str) -> None:
        """Take a token out (the seed's ``earse``); it is remembered as used
        until it would have expired."""
        self._claimed.discard(token)
        entry = self._entries.pop(token, None)
        if entry is not None:
            self._used[token] = entry.expires

    def expired(self, entry: CachedRequest) -> bool:
        return entry.expires <= self.clock()

    def consume(self, method: str, token: str) -> CachedRequest | None:
        """Redeem a token once, as ConsumeRequest does: look it up, erase it,
        then check its expiry; an unknown, expired or other-method one is None."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        self.erase(token)
        if self.expired(entry) or entry.method != method:
            return None
        return entry


def build_url(base: str, method: str, token: str) -> str:
    """``http://<stream address>/cri/<method>/<token>``, iSulad's layout."""
    return f"{base.rstrip('/')}/cri/{method}/{token}"
