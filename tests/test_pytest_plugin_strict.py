"""The plugin's fixtures in a plain pytest-asyncio project: strict mode (the
default), no ``asyncio_mode = "auto"``, no ``@pytest.mark.asyncio``."""

from __future__ import annotations

import pytest

pytest_plugins = ("pytester",)


def test_async_tests_using_the_fixtures_run_in_strict_mode(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        """
        async def answer(warden, question):
            async with warden.call("gpt-test", input_tokens=len(question)) as call:
                call.settle(output_tokens=7, cost=0.001)
            return "42"

        async def test_the_agent_is_metered(warden, usage_store, manual_clock):
            manual_clock.advance(5)
            assert await answer(warden, "what is six times seven") == "42"
            [event] = usage_store.query(agent_id="test-agent")
            assert (event.model, event.tokens_in, event.tokens_out) == ("gpt-test", 23, 7)
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-W", "ignore")
    result.assert_outcomes(passed=1)
