"""Lease mode of the Redis limiter: slices taken in one round trip, admitted
from locally, returned when spent, when their time is up or at ``close``.

The limiter contract runs on lease mode too (the ``redis-lease`` backend of
``make_limiter``); these tests look at what only lease mode does, on a real
redis-server and a ``ManualClock``.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
import usagewarden as uw
from redis_server import RedisServer
from test_redis_limiter import limiter_calls

LIMITS = uw.RateLimits(requests_per_minute=10, total_tokens_per_minute=1_000)


def leased(url: str, clock: uw.ManualClock | None, fraction: float = 1.0, seconds: float = 1.0):
    lease = uw.Lease(fraction=fraction, seconds=seconds)
    return uw.RedisRateLimiter(LIMITS, url, clock=clock, lease=lease)


def exact(url: str, clock: uw.ManualClock | None) -> uw.RedisRateLimiter:
    return uw.RedisRateLimiter(LIMITS, url, clock=clock)


# --- uw.Lease -------------------------------------------------------------------------


def test_a_lease_keeps_its_arguments() -> None:
    lease = uw.Lease(fraction=0.25, seconds=2)
    assert (lease.fraction, lease.seconds) == (0.25, 2.0)
    assert repr(lease) == "Lease(fraction=0.25, seconds=2.0)"
    assert lease == uw.Lease(fraction=0.25, seconds=2.0)
    assert lease != uw.Lease(fraction=0.5, seconds=2.0)
    assert hash(lease) == hash(uw.Lease(fraction=0.25, seconds=2.0))
    assert uw.Lease(fraction=1, seconds=0.5).fraction == 1.0


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.0001, 2, math.nan, math.inf])
def test_a_fraction_outside_zero_to_one_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        uw.Lease(fraction=fraction, seconds=1)


@pytest.mark.parametrize("seconds", [0, -1, math.nan, math.inf, 1e-7])
def test_seconds_that_are_not_positive_are_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        uw.Lease(fraction=0.5, seconds=seconds)


@pytest.mark.parametrize(
    ("fraction", "seconds", "named"),
    [("0.5", 1, "fraction"), (True, 1, "fraction"), (0.5, "1", "seconds"), (0.5, None, "seconds")],
)
def test_arguments_of_the_wrong_type_are_refused(fraction, seconds, named: str) -> None:
    with pytest.raises(TypeError, match=named):
        uw.Lease(fraction=fraction, seconds=seconds)


def test_the_arguments_are_keyword_only_and_required() -> None:
    with pytest.raises(TypeError):
        uw.Lease(0.5, 1)  # type: ignore[misc]
    with pytest.raises(TypeError):
        uw.Lease(fraction=0.5)  # type: ignore[call-arg]


def test_lease_must_be_a_lease(redis_url) -> None:
    with pytest.raises(TypeError, match="lease"):
        uw.RedisRateLimiter(LIMITS, redis_url, lease=0.5)  # type: ignore[arg-type]


def test_the_limiter_shows_its_lease(redis_url) -> None:
    limiter = leased(redis_url, None, fraction=0.5, seconds=2)
    assert limiter.lease == uw.Lease(fraction=0.5, seconds=2)
    assert "lease=Lease(fraction=0.5, seconds=2.0)" in repr(limiter)
    assert exact(redis_url, None).lease is None


# --- admitting from a slice -----------------------------------------------------------


def test_admissions_from_a_slice_take_no_round_trip(redis_server: RedisServer, redis_url) -> None:
    limits = uw.RateLimits(requests_per_minute=100_000, total_tokens_per_minute=10_000_000)
    limiter = uw.RedisRateLimiter(limits, redis_url, lease=uw.Lease(fraction=0.01, seconds=30))
    assert limiter.try_acquire("k", input_tokens=10)  # takes the slice: 1,000 requests
    before = limiter_calls(redis_server)
    for _ in range(500):
        assert limiter.try_acquire("k", input_tokens=10)
    assert limiter_calls(redis_server) == before
    limiter.close()
    # Redis counts what was admitted once the slice is back.
    assert exact(redis_url, None).usage("k") == uw.Usage(requests=501, input_tokens=5_010)


def test_a_slice_is_counted_in_redis_while_it_is_out(redis_url, clock) -> None:
    holder, other = leased(redis_url, clock, fraction=0.5), exact(redis_url, clock)
    assert holder.try_acquire("k", input_tokens=10)
    # Half of each limit is out: the other process sees it as used.
    assert other.remaining("k").requests == 5
    assert other.remaining("k").input_tokens == 500
    # The holder counts its own slice as what it admitted.
    assert holder.usage("k") == uw.Usage(requests=1, input_tokens=10)
    assert holder.remaining("k").requests == 9


def test_unused_slices_are_returned_at_close(redis_url, clock) -> None:
    first, second = leased(redis_url, clock), leased(redis_url, clock)
    for _ in range(3):
        assert first.try_acquire("k", input_tokens=100)
    refused = second.try_acquire("k")
    assert not refused.allowed
    # Honest: the whole limit is out in a slice that ends in 1 s and then
    # counts for one more window.
    assert refused.retry_after == pytest.approx(61.0)
    first.close()
    admitted = 0
    while second.try_acquire("k", input_tokens=100):
        admitted += 1
    assert admitted == 7, "the second limiter admits what the first did not use"


def test_a_spent_slice_is_returned_and_a_new_one_taken(redis_url, clock) -> None:
    first, second = leased(redis_url, clock, fraction=0.3), leased(redis_url, clock, fraction=0.3)
    for _ in range(3):
        assert first.try_acquire("k")
    assert second.try_acquire("k")  # second takes 3 more
    assert first.try_acquire("k")  # spent: first returns nothing unused, takes 3 more
    assert first.try_acquire("k") and first.try_acquire("k")
    assert second.try_acquire("k") and second.try_acquire("k")
    # 9 admitted and 9 out: the last request left takes a slice of one.
    assert first.try_acquire("k")
    assert not second.try_acquire("k", requests=2)
    second.close()
    first.close()
    assert exact(redis_url, clock).usage("k").requests == 10


def test_a_slice_expires_on_the_manual_clock(redis_url, clock) -> None:
    holder, other = leased(redis_url, clock, seconds=5), exact(redis_url, clock)
    for _ in range(3):
        assert holder.try_acquire("k")
    assert other.remaining("k").requests == 0
    clock.advance(4.999)
    holder.flush()
    assert other.remaining("k").requests == 0, "the slice is still out"
    clock.advance(0.001)
    holder.flush()  # the returned part is on its way: make sure Redis has it
    assert other.remaining("k").requests == 7
    # What it admitted counts until one window after the slice's end.
    clock.set(5 + 60 - 0.001)
    assert other.usage("k").requests == 3
    clock.set(5 + 60)
    assert other.usage("k").requests == 0


def test_a_request_larger_than_a_slice_but_within_the_limit_is_admitted(redis_url, clock) -> None:
    limiter = leased(redis_url, clock, fraction=0.1)
    assert limiter.try_acquire("k", input_tokens=10)  # a slice of 100 tokens
    big = limiter.try_acquire("k", input_tokens=600)
    assert big and big.reservation is not None
    assert limiter.usage("k").input_tokens == 610
    assert exact(redis_url, clock).remaining("k").input_tokens <= 1_000 - 610


def test_a_request_larger_than_the_limit_fails_at_once(redis_url, clock) -> None:
    limiter = leased(redis_url, clock)
    decision = limiter.try_acquire("k", input_tokens=1_001)
    assert not decision.allowed
    assert decision.retry_after is None
    with pytest.raises(uw.RateLimitExceeded):
        limiter.acquire_blocking("k", input_tokens=1_001, timeout=0)
    assert exact(redis_url, clock).usage("k") == uw.Usage()


def test_a_refund_goes_back_into_the_slice(redis_server: RedisServer, redis_url, clock) -> None:
    limiter = leased(redis_url, clock)
    reservation = limiter.try_acquire("k", input_tokens=900).reservation
    assert reservation is not None
    before = limiter_calls(redis_server)
    reservation.settle(input_tokens=100)
    assert limiter.try_acquire("k", input_tokens=800), "the refund is admitted from the slice"
    assert limiter_calls(redis_server) == before
    limiter.close()
    assert exact(redis_url, clock).usage("k") == uw.Usage(requests=2, input_tokens=900)


def test_an_extra_charge_beyond_the_slice_reaches_redis_at_once(redis_url, clock) -> None:
    limiter = leased(redis_url, clock, fraction=0.5)
    reservation = limiter.try_acquire("k", input_tokens=100).reservation
    assert reservation is not None
    reservation.settle(input_tokens=700)  # more than the 500-token slice holds
    limiter.flush()
    other = exact(redis_url, clock)
    # The slice widened by what it could not hold: Redis counts the 700 at once.
    assert other.remaining("k").input_tokens == 1_000 - 700


def test_a_settle_after_the_slice_is_back_goes_to_redis(redis_url, clock) -> None:
    limiter = leased(redis_url, clock)
    reservation = limiter.try_acquire("k", input_tokens=500).reservation
    assert reservation is not None
    limiter.close()
    reservation.cancel()
    limiter.flush()
    assert exact(redis_url, clock).usage("k") == uw.Usage()


def test_tuple_keys_take_slices_on_every_key_or_none(redis_url, clock) -> None:
    limiter = uw.RedisRateLimiter(
        LIMITS,
        redis_url,
        clock=clock,
        per_key={"tenant": uw.RateLimits(requests_per_minute=2)},
        lease=uw.Lease(fraction=1.0, seconds=1),
    )
    assert limiter.try_acquire(("tenant", "alice"))
    assert limiter.try_acquire(("tenant", "bob"))
    refused = limiter.try_acquire(("tenant", "carol"))
    assert not refused and refused.retry_after == pytest.approx(61.0)
    limiter.close()
    other = exact(redis_url, clock)
    assert other.usage("carol") == uw.Usage()
    assert other.usage("alice").requests == other.usage("bob").requests == 1


def test_a_pause_stops_admissions_from_the_slice(redis_url, clock) -> None:
    limiter = leased(redis_url, clock)
    assert limiter.try_acquire("k")
    exact(redis_url, clock).pause("k", 10)  # another process sees a 429
    assert limiter.try_acquire("k"), "this process has not heard of it yet"
    limiter.pause("k", 10)
    refused = limiter.try_acquire("k")
    assert not refused and refused.retry_after == pytest.approx(10.0)


# --- a dead holder --------------------------------------------------------------------

HOLDER = """
import sys, time
import usagewarden as uw
limits = uw.RateLimits(requests_per_minute=10, total_tokens_per_minute=1_000)
limiter = uw.RedisRateLimiter(limits, sys.argv[1], lease=uw.Lease(fraction=1.0, seconds=2))
assert limiter.try_acquire("k", input_tokens=100)
assert limiter.try_acquire("k", input_tokens=100)
print("holding", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_killed_holder_frees_nothing_it_did_not_measure(redis_url) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "holding"
        child.kill()
        child.wait(10)
        taken = time.monotonic()
    finally:
        child.kill()
    survivor = exact(redis_url, None)
    # Nobody returned the slice: it stays counted in full until it ages out
    # (its end, 2 s after it was taken, plus the window).
    assert survivor.remaining("k").requests == 0
    refused = survivor.try_acquire("k")
    assert not refused and refused.retry_after is not None
    assert 62 - (time.monotonic() - taken) - 5 < refused.retry_after <= 62


LEAVER = """
import sys
import usagewarden as uw
limits = uw.RateLimits(requests_per_minute=10, total_tokens_per_minute=1_000)
limiter = uw.RedisRateLimiter(limits, sys.argv[1], lease=uw.Lease(fraction=1.0, seconds=30))
assert limiter.try_acquire("k", input_tokens=100)
assert limiter.try_acquire("k", input_tokens=100)
"""


@pytest.mark.slow
def test_a_process_that_exits_returns_its_slices(redis_url) -> None:
    subprocess.run([sys.executable, "-c", LEAVER, redis_url], check=True, timeout=60)
    survivor = exact(redis_url, None)
    assert survivor.remaining("k").requests == 8
    assert survivor.usage("k") == uw.Usage(requests=2, input_tokens=200)


def test_many_keys_keep_their_slices_until_close(redis_url, clock) -> None:
    # More keys than the slot map holds before its first sweep of idle slots:
    # no slice out is lost, every one comes back at close.
    limiter = leased(redis_url, clock, fraction=0.5)
    keys = [f"key{i}" for i in range(1_500)]
    for key in keys:
        assert limiter.try_acquire(key, input_tokens=10)
    for key in keys[::100]:
        limiter.reset(key)  # idle slots, for the sweep to drop
        assert limiter.try_acquire(key, input_tokens=10)
    limiter.close()
    other = exact(redis_url, clock)
    for key in keys[::7]:
        assert other.usage(key) == uw.Usage(requests=1, input_tokens=10), key


# --- Redis away -----------------------------------------------------------------------


@pytest.mark.slow
def test_with_redis_away_lease_mode_falls_back_on_the_local_share(tmp_path) -> None:
    server = RedisServer(tmp_path)
    try:
        limiter = uw.RedisRateLimiter(
            LIMITS,
            server.url,
            lease=uw.Lease(fraction=0.2, seconds=30),
            on_unavailable="local",
            local_processes=2,
            timeout=0.2,
        )
        assert limiter.try_acquire("k")  # a slice of 2 requests
        assert limiter.try_acquire("k")
        server.stop()
        # The slice is spent; Redis cannot give another: half of each limit, locally.
        admitted = sum(bool(limiter.try_acquire("k")) for _ in range(10))
        assert admitted == 5
        assert limiter.health()["local"] is True
    finally:
        server.stop()
