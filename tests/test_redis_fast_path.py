"""The Redis limiter's common admission (fast.lua) agrees with its general path.

The library is loaded from its source three times on a real redis-server: as
shipped, with the common admission taken out (every call on the general path),
and as shipped counting the calls the common admission decides. The same random
calls, on the same clock, go to each library on its own keys: every reply and
every field stored must be the same.
"""

from __future__ import annotations

import random
import socket
import struct
from pathlib import Path
from typing import Any

from redis_server import RedisServer

SOURCE = Path(__file__).resolve().parents[1] / "src" / "limiter" / "redis"
PARTS = ("limiter.lua", "queue.lua", "fast.lua", "ops.lua")
FAST_CALL = "reply, at = admit_fast(KEYS, ARGV, o == 'check')"
FAST_REPLY = "if reply then return reply end"
TAKEN = "fast-path-taken"


def doubles(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


#: Limits as the client encodes them: windows (us), then (dimension, window, amount).
LIMITS = [
    doubles(1, 6e7, 2, 1, 6e7, 10, 4, 6e7, 2000),
    doubles(2, 1e6, 6e7, 3, 1, 1e6, 3, 2, 6e7, 1000, 3, 6e7, 800),
    doubles(1, 6e7, 2, 5, 6e7, 5e9, 1, 6e7, 4),
    doubles(1, 6e7, 2, 1, 6e7, 1000, 4, 6e7, 200_000),
    doubles(2, 6e7, 1e6, 3, 1, 6e7, 500, 4, 6e7, 100_000, 1, 1e6, 50),
]


class Raw:
    """Binary-safe commands over one socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")

    def __call__(self, *args: str | bytes | float) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self.read()

    def read(self) -> Any:
        line = self.reader.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.reader.read(size + 2)[:-2]
        if kind == b":":
            return int(rest)
        if kind == b"-":
            return ("error", rest)
        return rest


def pairs(flat: list[bytes]) -> list[tuple[bytes, bytes]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


def check_layout(fields: list[tuple[bytes, bytes]]) -> None:
    """The stored layout's invariants: m's flags tell whether a ceiling or a queue is
    stored (the common admission reads only m and the windows), and the newest bucket
    of a window lives in the window's state, not in a field of its own."""
    stored = dict(fields)
    flags = struct.unpack("<4d", stored[b"m"])[2] if b"m" in stored else 0
    ceilings = any(f in stored for f in (b"c1", b"c2", b"c3", b"c4"))
    assert bool(int(flags) & 1) == ceilings, stored.keys()
    assert bool(int(flags) & 2) == (b"q" in stored), stored.keys()
    for field, value in stored.items():
        if field.startswith(b"w"):
            newest = struct.unpack("16d", value)[2]
            assert b"b%s:%d" % (field[1:], newest) not in stored, field


def library(name: str, code: str) -> str:
    return f"#!lua name={name}\n{code}\nredis.register_function('{name}', main)\n"


def test_the_common_admission_decides_and_writes_as_the_general_path(
    redis_server: RedisServer,
) -> None:
    redis_server.flush()
    raw = Raw(redis_server.port)
    code = "".join((SOURCE / part).read_text() for part in PARTS)
    assert FAST_CALL in code and FAST_REPLY in code
    variants = {
        "shipped": code,
        "general": code.replace(FAST_CALL, "at = nil"),
        "counted": code.replace(FAST_REPLY, f"if reply then redis.call('INCR', '{TAKEN}') "
                                "return reply end"),
    }  # fmt: skip
    for name, text in variants.items():
        assert (
            raw("FUNCTION", "LOAD", "REPLACE", library(f"uwtest_{name}", text))
            == f"uwtest_{name}".encode()
        )
    rng = random.Random(12)
    now = 1.7e15
    names = ["a", "b", "c"]
    chosen = {k: rng.choice(LIMITS) for k in names}
    calls = 0
    for step in range(2500):
        if rng.random() < 0.02:
            chosen = {k: rng.choice(LIMITS) for k in names}
        now += rng.choice([0, 1, 1000, 50_000, 300_000, 1e6, 5e6, 2e7, 6.1e7])
        if rng.random() < 0.01:
            now -= 2e6  # time runs back
        keys = rng.sample(names, rng.choice([1, 1, 1, 2, 3]))
        use = [rng.choice([0, 1, 1, 2]), rng.choice([0, 50, 200, 700]), rng.choice([0, 30, 300]),
               rng.choice([0, 5]), 0, rng.choice([0, 0, 1e8])]  # fmt: skip
        op = rng.choices(
            ["acquire", "check", "adjust", "remaining", "usage", "reset", "pause", "observe",
             "lease"], [55, 15, 8, 4, 3, 2, 3, 3, 7])[0]  # fmt: skip
        sub, extra, observed = [0.0] * 6, -1.0, []
        if op == "adjust":
            sub, extra = [1, 100, 0, 0, 0, 0], now - rng.choice([0, 1e6, 3e7])
        elif op == "usage":
            extra = rng.choice([-1, 1e6, 3e7])
        elif op == "pause":
            extra = rng.choice([1e5, 2e6])
        elif op == "lease":
            extra = 1e6
        elif op == "observe":
            observed = [1, rng.choice([1, 2, 4]), rng.choice([0, 3, 100]), rng.choice([-1, 2e6])]
        numbers = [now, *use, *sub, extra, 7, 5e6, 0] + [0, 0] * len(keys) + observed
        seen = []
        for name in variants:
            redis_keys = [f"{name}:{k}" for k in keys]
            reply = raw("FCALL", f"uwtest_{name}", len(keys), *redis_keys, op,
                        doubles(*numbers), f"{name}:wake", *[chosen[k] for k in keys])  # fmt: skip
            fields = [sorted(pairs(raw("HGETALL", k))) for k in redis_keys]
            ttls = [raw("PTTL", k) for k in redis_keys]
            seen.append((reply, fields, ttls))
        calls += 1
        first = seen[0]
        for stored in first[1]:
            check_layout(stored)
        for other in seen[1:]:
            assert other[0] == first[0], (step, op, keys)
            assert other[1] == first[1], (step, op, keys)
            assert all(abs(a - b) < 1000 for a, b in zip(other[2], first[2], strict=True)), (
                step,
                op,
                keys,
            )
    taken = int(raw("GET", TAKEN))
    # The comparison covers both paths: many calls of each.
    assert 300 < taken < calls * 0.9, taken
