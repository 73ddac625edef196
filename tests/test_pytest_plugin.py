"""The pytest plugin: registered through the pytest11 entry point, its
fixtures give an application's test suite a clock, a ledger, a limiter and
a warden in a few lines."""

from __future__ import annotations

import importlib.metadata

import pytest

pytest_plugins = ("pytester",)


def test_the_plugin_is_registered_for_pytest() -> None:
    plugins = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert plugins.get("usagewarden") == "usagewarden.pytest_plugin"


def test_an_application_suite_asserts_on_usage_with_the_fixtures(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    pytester.makepyfile(
        """
        import pytest
        import usagewarden as uw

        async def answer(warden, question):
            async with warden.call("gpt-test", input_tokens=len(question)) as call:
                call.settle(output_tokens=7, cost=0.001)
            return "42"

        async def test_the_agent_is_metered(warden, usage_store, manual_clock):
            manual_clock.advance(5)
            assert await answer(warden, "what is six times seven") == "42"
            [event] = usage_store.query(agent_id="test-agent")
            assert (event.model, event.tokens_in, event.tokens_out) == ("gpt-test", 23, 7)
            assert event.timestamp.isoformat() == "2026-01-01T00:00:05+00:00"

        @pytest.mark.usagewarden_limits(requests_per_minute=2)
        def test_limits_come_from_the_marker(rate_limiter, manual_clock):
            assert rate_limiter.try_acquire("k") and rate_limiter.try_acquire("k")
            refused = rate_limiter.try_acquire("k")
            assert not refused and refused.retry_after == 60
            manual_clock.advance(60)
            assert rate_limiter.try_acquire("k")

        def test_the_default_limits(rate_limiter):
            assert rate_limiter.remaining("k").requests == 60

        def test_each_test_gets_a_fresh_store(usage_store):
            assert usage_store.query() == []
            usage_store.record(uw.UsageEvent("a", "c"))
            assert len(usage_store.query()) == 1
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
