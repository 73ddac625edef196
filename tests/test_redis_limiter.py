"""What only the Redis limiter has: the script on the server, the server's
clock, expiring keys, bounded memory, clusters, pipelined settles, failures.

The shared limiter contract runs on it through ``make_limiter`` (see the
limiter test files); these tests look at Redis itself, over a plain socket.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import usagewarden as uw
from redis_server import RedisServer, free_cluster_port, free_port, ping, until_served_again


def limiter_on(url: str, **options: object) -> uw.RedisRateLimiter:
    limits = uw.RateLimits(requests_per_minute=100, total_tokens_per_minute=10_000)
    return uw.RedisRateLimiter(limits, url, **options)  # type: ignore[arg-type]


def integer(reply: bytes) -> int:
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


def test_both_limiters_satisfy_the_limiter_protocol(redis_url) -> None:
    limiter = limiter_on(redis_url)
    assert isinstance(limiter, uw.Limiter)
    assert isinstance(uw.RateLimiter(uw.RateLimits(requests_per_minute=1)), uw.Limiter)
    assert not isinstance(object(), uw.Limiter)


def test_state_lives_in_redis_and_is_shared_by_limiters(redis_url) -> None:
    first, second = limiter_on(redis_url), limiter_on(redis_url)
    assert first.try_acquire("k", input_tokens=9_000)
    d = second.try_acquire("k", input_tokens=2_000)
    assert not d.allowed
    assert d.limit is not None and d.limit.name == "total_tokens_per_minute"
    assert second.usage("k") == uw.Usage(requests=1, input_tokens=9_000)


def test_the_servers_clock_stamps_reservations(redis_server, redis_url) -> None:
    reply = redis_server.command("TIME").split(b"\r\n")
    server_now = int(reply[2]) + int(reply[4]) / 1e6
    r = limiter_on(redis_url).try_acquire("k").reservation
    assert r is not None
    assert abs(r.at - server_now) < 5.0


def test_idle_keys_expire_and_memory_per_key_is_bounded(redis_server, redis_url) -> None:
    limiter = limiter_on(redis_url, prefix="uw")
    big = uw.RedisRateLimiter(
        uw.RateLimits(requests_per_minute=10**9, total_tokens_per_minute=10**12),
        redis_url,
        prefix="uw",
    )
    limiter.try_acquire("small")
    ttl_ms = integer(redis_server.command("PTTL", "uw:v2:small"))
    # A window (and a second) after its last use, set an eighth longer so that most
    # calls need no PEXPIRE.
    assert 0 < ttl_ms <= 61_000 * 9 // 8, "a key expires about a window after its last use"
    for _ in range(3_000):
        big.try_acquire("busy", input_tokens=1_000)
    fields = integer(redis_server.command("HLEN", "uw:v2:busy"))
    # Running sums per bucket (at most 1,000 a window), never one entry per call or token.
    assert fields <= 1_000 + 10
    assert big.usage("busy") == uw.Usage(requests=3_000, input_tokens=3_000_000)


def test_keys_of_another_layout_are_neither_read_nor_written(redis_server, redis_url) -> None:
    # A key as stored by a version with the earlier layout ("<prefix>:<key>", one field
    # per value): paused far into the future.
    redis_server.command("HSET", "uwold:k", "g", "3", "p", str(10**18))
    limiter = limiter_on(redis_url, prefix="uwold")
    assert limiter.try_acquire("k").allowed
    limiter.pause("k", 60)
    limiter.reset()
    assert integer(redis_server.command("EXISTS", "uwold:k")) == 1
    assert str(10**18).encode() in redis_server.command("HGET", "uwold:k", "p")
    assert integer(redis_server.command("HLEN", "uwold:k")) == 2


@pytest.mark.parametrize("flushed", ["SCRIPT", "FUNCTION"])
def test_the_code_is_loaded_again_after_a_flush(redis_server, redis_url, flushed: str) -> None:
    limiter = limiter_on(redis_url)
    assert limiter.try_acquire("k")
    assert redis_server.command(flushed, "FLUSH").startswith(b"+OK")
    assert limiter.try_acquire("k")
    r = limiter.try_acquire("k", input_tokens=10).reservation
    assert r is not None
    redis_server.command(flushed, "FLUSH")
    r.settle(input_tokens=4)
    limiter.flush()
    assert limiter.usage("k") == uw.Usage(requests=3, input_tokens=4)


def test_where_functions_are_unavailable_the_code_runs_as_a_script(redis_server, redis_url) -> None:
    # A user who may not use FUNCTION (as on Redis 6, which has none): the same code
    # is loaded and called as a script, and loaded again after a flush.
    created = redis_server.command(
        "ACL", "SETUSER", "nofunctions", "on", ">secret", "~*", "&*", "+@all", "-function"
    )
    assert created.startswith(b"+OK")
    try:
        limiter = limiter_on(redis_url.replace("redis://", "redis://nofunctions:secret@"))
        scripts = commands_run(redis_server, "evalsha")
        functions = commands_run(redis_server, "fcall")
        assert limiter.try_acquire("k", input_tokens=10)
        assert not limiter.try_acquire("k", input_tokens=10_000)
        assert commands_run(redis_server, "evalsha") - scripts == 2
        assert commands_run(redis_server, "fcall") == functions
        redis_server.command("SCRIPT", "FLUSH")
        assert limiter.try_acquire("k", input_tokens=5)
        assert limiter.usage("k") == uw.Usage(requests=2, input_tokens=15)
    finally:
        redis_server.command("ACL", "DELUSER", "nofunctions")


def test_admissions_in_many_buckets_leave_their_window_each_in_turn(redis_url) -> None:
    # Admitting starts a new bucket every 10 ms (the quantum is 1 ms) and links it to
    # the one before; reads and later admissions drop each bucket exactly when it
    # leaves the window, following those links.
    clock = uw.ManualClock(1_000.0)
    limits = uw.RateLimits(requests_per_second=100, input_tokens_per_second=10_000)
    limiter = uw.RedisRateLimiter(limits, redis_url, clock=clock)
    for i in range(20):
        assert limiter.try_acquire("k", input_tokens=i + 1)
        clock.advance(0.01)
    assert limiter.usage("k") == uw.Usage(requests=20, input_tokens=210)
    for i in range(20):
        clock.set(1_001.0 + 0.01 * i + 0.005)  # admission i has left the window
        left = 19 - i
        assert limiter.usage("k") == uw.Usage(requests=left, input_tokens=sum(range(i + 2, 21))), (
            f"after admission {i} left"
        )
        assert limiter.remaining("k").requests == 100 - left
    assert limiter.try_acquire("k", input_tokens=5)
    assert limiter.usage("k") == uw.Usage(requests=1, input_tokens=5)


def test_settles_are_sent_without_waiting_and_flushed_by_close(redis_url) -> None:
    limiter = limiter_on(redis_url)
    reservations = [limiter.try_acquire("k", input_tokens=100).reservation for _ in range(20)]
    for r in reservations:
        assert r is not None
        r.settle(input_tokens=10)
    limiter.close()
    assert limiter_on(redis_url).usage("k") == uw.Usage(requests=20, input_tokens=200)


def test_settles_reach_redis_when_the_process_exits(redis_url, tmp_path: Path) -> None:
    script = tmp_path / "settle_and_exit.py"
    script.write_text(
        "import usagewarden as uw, sys\n"
        "l = uw.RedisRateLimiter(uw.RateLimits(requests_per_minute=100), sys.argv[1])\n"
        "for _ in range(50):\n"
        "    l.try_acquire('k', input_tokens=100).reservation.settle(input_tokens=1)\n"
    )
    subprocess.run([sys.executable, str(script), redis_url], check=True, timeout=60)
    assert limiter_on(redis_url).usage("k") == uw.Usage(requests=50, input_tokens=50)


def test_a_reset_clears_every_key_of_this_prefix_only(redis_url) -> None:
    ours, theirs = limiter_on(redis_url, prefix="a"), limiter_on(redis_url, prefix="b")
    for key in ("x", "y"):
        ours.try_acquire(key)
        theirs.try_acquire(key)
    ours.reset()
    assert ours.usage("x") == uw.Usage() and ours.usage("y") == uw.Usage()
    assert theirs.usage("x").requests == 1


@pytest.mark.parametrize(
    ("options", "error", "argument"),
    [
        ({"prefix": "{tenant}"}, ValueError, "prefix"),
        ({"prefix": ""}, ValueError, "prefix"),
        ({"on_unavailable": "retry"}, ValueError, "on_unavailable"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": "1"}, TypeError, "timeout"),
        ({"lease": object()}, TypeError, "lease"),
        ({"lease": 0.5}, TypeError, "lease"),
    ],
)
def test_bad_options_name_the_argument(redis_url, options, error, argument) -> None:
    with pytest.raises(error, match=argument):
        limiter_on(redis_url, **options)


def test_a_bad_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="url"):
        limiter_on("http://127.0.0.1:1/")


def test_an_unreachable_server_fails_fast_with_a_clear_error() -> None:
    start = time.monotonic()
    with pytest.raises(uw.StoreError, match="Redis at redis://127.0.0.1"):
        limiter_on(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    assert time.monotonic() - start < 5


def test_health_reports_the_connection(redis_url) -> None:
    health = limiter_on(redis_url).health()
    assert health == {
        "ok": True,
        "local": False,
        "url": redis_url,
        "cluster": False,
        "error": None,
    }


def test_a_password_never_appears_in_what_the_limiter_reports(redis_server) -> None:
    url = f"redis://:not-the-password@127.0.0.1:{redis_server.port}/0"
    with pytest.raises(uw.StoreError) as refused:  # this server has no password
        limiter_on(url, timeout=0.5)
    assert "not-the-password" not in str(refused.value)
    assert "***@127.0.0.1" in str(refused.value)


@pytest.mark.slow
def test_a_restarted_server_fails_calls_fast_then_serves_again(redis_server, redis_url) -> None:
    limiter = limiter_on(redis_url, timeout=0.5)
    assert limiter.try_acquire("k")
    redis_server.stop()
    start = time.monotonic()
    with pytest.raises(uw.StoreError, match="Redis"):
        limiter.try_acquire("k")
    assert time.monotonic() - start < 5, "a call to a server that is down fails fast"
    assert not limiter.health()["ok"]
    redis_server.start()
    until_served_again(limiter)
    assert limiter.health()["ok"]
    assert limiter.usage("k").requests == 1


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory):
    """A one-node Redis Cluster holding every slot."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server)")
    directory = tmp_path_factory.mktemp("cluster")
    log = directory / "redis.log"
    for _attempt in range(3):  # a free port can be taken before the server binds it
        port = free_cluster_port()
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory), "--cluster-enabled", "yes",
             "--cluster-config-file", str(directory / f"nodes-{port}.conf"),
             "--logfile", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not ping(port) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if ping(port):
            break
        process.terminate()
        process.wait(10)
    else:
        pytest.fail(f"the cluster node did not start: {log.read_text() if log.exists() else ''}")
    try:
        node = RedisServer.__new__(RedisServer)
        node.port = port
        assert node.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383").startswith(b"+OK")
        while b"cluster_state:ok" not in node.command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the cluster never became ok"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def test_on_a_cluster_a_tuple_must_share_a_hash_slot(cluster_url) -> None:
    limiter = limiter_on(cluster_url)
    assert limiter.health()["cluster"] is True
    with pytest.raises(ValueError, match="hash slot"):
        limiter.try_acquire(("alice", "bob"))
    assert limiter.try_acquire(("{tenant}:alice", "{tenant}:bob"))
    assert limiter.usage("{tenant}:bob").requests == 1


WAITER = """
import asyncio, sys, time, usagewarden as uw
limiter = uw.RedisRateLimiter(uw.RateLimits(requests_per_minute=1), sys.argv[1])
async def main():
    print("waiting", flush=True)
    await limiter.acquire("k", timeout=30)
    print(repr(time.time()), flush=True)
asyncio.run(main())
"""


def commands_run(server: RedisServer, command: str) -> int:
    stats = server.command("INFO", "commandstats").decode()
    for line in stats.splitlines():
        if line.startswith(f"cmdstat_{command}:calls="):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def limiter_calls(server: RedisServer) -> int:
    """Calls of the limiter's code: as a Redis Function (FCALL) or a script (EVALSHA)."""
    return commands_run(server, "fcall") + commands_run(server, "evalsha")


@pytest.mark.slow
def test_a_refund_in_one_process_wakes_a_waiter_in_another_at_once(
    redis_server, redis_url, tmp_path: Path
) -> None:
    limiter = uw.RedisRateLimiter(uw.RateLimits(requests_per_minute=1), redis_url)
    reservation = limiter.try_acquire("k").reservation
    assert reservation is not None
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    waiter = subprocess.Popen(
        [sys.executable, str(script), redis_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert waiter.stdout is not None
        assert waiter.stdout.readline().strip() == "waiting"
        time.sleep(1.0)  # let it try once and go to sleep (its retry_after is ~60 s)
        calls_before = limiter_calls(redis_server)
        time.sleep(1.0)  # within its first ticket refresh (2.5 s after its first try)
        calls_while_waiting = limiter_calls(redis_server) - calls_before
        assert calls_while_waiting == 0, "a waiting process does not poll"
        cancelled_at = time.time()
        reservation.cancel()
        admitted_at = float(waiter.stdout.readline())
        assert waiter.wait(10) == 0
    finally:
        waiter.kill()
    assert admitted_at - cancelled_at < 0.05
