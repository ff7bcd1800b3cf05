"""The streaming request cache, sans I/O: a fake clock and fixed tokens."""

from __future__ import annotations

import itertools

import pytest

from teaching_cri.errors import ResourceExhausted
from teaching_cri.streaming.request_cache import RequestCache, build_url


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **kw: int) -> RequestCache:
    counter = itertools.count(1)
    return RequestCache(
        clock=clock,
        token_bytes=lambda n: next(counter).to_bytes(n, "big"),
        **kw,  # type: ignore[arg-type]
    )


def test_a_token_is_redeemed_once_for_its_method_only() -> None:
    clock = Clock()
    cache = make(clock)
    token = cache.insert("exec", "the request")
    assert cache.consume("attach", token) is None, "an exec token does not open an attach"
    token = cache.insert("exec", "the request")
    entry = cache.consume("exec", token)
    assert entry is not None and entry.request == "the request"
    assert cache.consume("exec", token) is None, "used once"


def test_a_token_expires_after_its_ttl() -> None:
    clock = Clock()
    cache = make(clock)
    token = cache.insert("attach", "r")
    clock.now += 60.0
    assert cache.consume("attach", token) is None


def test_an_expired_token_is_used_up_by_its_consumption_too() -> None:
    """ConsumeRequest erases before it checks the expiry (the seed's order)."""
    clock = Clock()
    cache = make(clock)
    token = cache.insert("exec", "r")
    entry = cache.peek(token)
    assert entry is not None and not cache.expired(entry)
    clock.now += 60.0
    assert cache.expired(entry)
    assert cache.consume("exec", token) is None
    assert cache.peek(token) is None and cache.check("exec", token) == "used"


def test_a_full_cache_refuses_until_old_tokens_expire() -> None:
    clock = Clock()
    cache = make(clock, max_in_flight=3)
    for _ in range(3):
        cache.insert("exec", "r")
    with pytest.raises(ResourceExhausted, match="maximum number of pending"):
        cache.insert("exec", "r")
    clock.now += 61
    cache.insert("exec", "r")  # the expired ones are collected first
    assert len(cache) == 1


def test_tokens_are_url_safe_and_the_url_is_iSulads() -> None:
    cache = make(Clock())
    token = cache.insert("exec", "r")
    assert token.isascii() and "/" not in token and "=" not in token
    assert build_url("http://127.0.0.1:10350/", "exec", token) == (
        f"http://127.0.0.1:10350/cri/exec/{token}"
    )
    with pytest.raises(ValueError):
        cache.insert("shell", "r")


def test_check_tells_a_token_apart_without_using_it() -> None:
    clock = Clock()
    cache = make(clock)
    token = cache.insert("exec", "r")
    assert cache.check("exec", token) == "valid"
    assert cache.check("attach", token) == "bad method"
    assert cache.check("exec", "nope") == "unknown"
    assert cache.consume("exec", token) is not None
    assert cache.check("exec", token) == "used"
    later = cache.insert("exec", "r")
    clock.now += 61
    assert cache.check("exec", later) == "expired"
    cache.garbage_collection()
    assert cache.check("exec", token) == "unknown", "forgotten once it would have expired"
