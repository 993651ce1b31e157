"""The token buckets and the idempotency cache alone, on a clock moved by hand."""

from __future__ import annotations

import pytest

from pbxbrain.api.errors import ApiError
from pbxbrain.api.idempotency import IdempotencyCache, StoredAnswer
from pbxbrain.api.ratelimit import RateLimiter
from tests.support.api_fakes import FakeClock

ANSWER = StoredAnswer(202, {"call_id": "c1"}, {"Location": "/v1/calls/c1"})


def test_given_a_burst_then_rate_requests_pass_and_the_next_waits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(6, clock=clock)

    assert [limiter.acquire("ivanov") for _ in range(6)] == [None] * 6
    assert limiter.acquire("ivanov") == pytest.approx(10.0)
    assert limiter.acquire("petrov") is None  # keys are independent


def test_given_time_passes_then_the_bucket_refills_evenly_up_to_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(6, clock=clock)
    for _ in range(6):
        limiter.acquire("k")

    clock.advance(4)
    assert limiter.acquire("k") == pytest.approx(6.0)
    clock.advance(6)
    assert limiter.acquire("k") is None
    clock.advance(3600)
    assert [limiter.acquire("k") for _ in range(7)].count(None) == 6


def test_given_a_refused_request_then_it_takes_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, clock=clock)
    limiter.acquire("k")
    for _ in range(10):
        limiter.acquire("k")

    clock.advance(60)
    assert limiter.acquire("k") is None


def test_given_many_keys_then_full_buckets_are_pruned() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, clock=clock, max_keys=3)
    for key in "abc":
        limiter.acquire(key)
    clock.advance(60)

    limiter.acquire("d")

    assert limiter.acquire("a") is None  # pruned and recreated full, or refilled: same


def test_given_a_new_key_then_proceed_and_the_answer_is_kept() -> None:
    cache = IdempotencyCache(clock=FakeClock())

    assert cache.begin("crm", "k1", "f1") is None
    cache.finish("crm", "k1", ANSWER)

    assert cache.begin("crm", "k1", "f1") == ANSWER


def test_given_another_fingerprint_then_409_conflict() -> None:
    cache = IdempotencyCache(clock=FakeClock())
    cache.begin("crm", "k1", "f1")
    cache.finish("crm", "k1", ANSWER)

    with pytest.raises(ApiError) as error:
        cache.begin("crm", "k1", "f2")
    assert (error.value.status, error.value.code) == (409, "idempotency_conflict")


def test_given_a_key_in_progress_then_409_until_it_finishes_or_is_abandoned() -> None:
    cache = IdempotencyCache(clock=FakeClock())
    cache.begin("crm", "k1", "f1")

    with pytest.raises(ApiError) as error:
        cache.begin("crm", "k1", "f1")
    assert error.value.code == "idempotency_in_progress"

    cache.abandon("crm", "k1")
    assert cache.begin("crm", "k1", "f1") is None


def test_given_keys_of_two_tokens_then_they_never_meet() -> None:
    cache = IdempotencyCache(clock=FakeClock())
    cache.begin("crm", "k1", "f1")
    cache.finish("crm", "k1", ANSWER)

    assert cache.begin("other", "k1", "f2") is None


def test_given_24_hours_then_the_key_is_forgotten() -> None:
    clock = FakeClock()
    cache = IdempotencyCache(clock=clock)
    cache.begin("crm", "k1", "f1")
    cache.finish("crm", "k1", ANSWER)

    clock.advance(24 * 3600 - 1)
    assert cache.begin("crm", "k1", "f1") == ANSWER
    clock.advance(2)
    assert cache.begin("crm", "k1", "f2") is None


def test_given_the_table_is_full_then_the_oldest_go() -> None:
    cache = IdempotencyCache(clock=FakeClock(), max_entries=2)
    for key in ("a", "b", "c"):
        cache.begin("crm", key, "f")
        cache.finish("crm", key, ANSWER)

    assert len(cache) == 2
    assert cache.begin("crm", "a", "other") is None  # "a" was evicted
