"""OpenAI Agents SDK integration: ``UsageWardenHooks``, run hooks that make
every model call of a run wait for capacity, then settle and record it.

``Runner.run(agent, input, hooks=UsageWardenHooks(warden))``. How the SDK
calls hooks shapes the design:

- ``on_llm_start`` is awaited before the model request (retries included)
  and ``on_llm_end`` after the response, each in a task of its own; neither
  gets an id for the call. A call is therefore matched by the run's context
  wrapper (one per ``Runner.run``, and a fresh one for each agent-as-tool
  run) and the agent, so concurrent runs sharing one hooks object, one agent
  or one warden never take each other's reservation.
- Nothing is called when the model request raises. Wrap runs in
  ``async with hooks.guard():`` to close the calls a failed run left open as
  failed (tokens refunded, request counted, the error recorded). Without a
  guard, such a call is closed as failed with ``CallAbandoned`` once its run's
  context is garbage-collected, at the next hook call or ``close_abandoned()``.
- Agents run as tools (``agent.as_tool``) get no run hooks unless given
  them: pass the same object, ``as_tool(..., hooks=hooks)``.

Install with ``pip install 'usagewarden[openai-agents]'``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from . import checked_adapter_args, require

require("agents", "openai-agents")

from agents import Agent, ModelResponse, RunContextWrapper, RunHooks  # noqa: E402
from agents.items import TResponseInputItem  # noqa: E402
from agents.models.default_models import get_default_model  # noqa: E402
from agents.tracing import get_current_trace  # noqa: E402

from ..warden import Call, Warden, _current_run  # noqa: E402
from ._shared import (  # noqa: E402
    clip_id,
    count,
    estimate_text_tokens,
    output_reserve,
    settle_reported,
    sync_provider_client,
    text_chars,
)

__all__ = ["CallAbandoned", "UsageWardenHooks", "estimate_tokens"]


class CallAbandoned(Exception):
    """A model call whose end the SDK never reported: its run failed or was
    abandoned before ``on_llm_end``."""


class _Scope:
    """The calls opened inside one ``hooks.guard()`` block."""

    def __init__(self) -> None:
        self.entries: list[_Open] = []


_scope: ContextVar[_Scope | None] = ContextVar("usagewarden_agents_scope", default=None)


@dataclass(eq=False)
class _Open:
    call: Call
    agent: object
    #: Weak, so a run that dies without on_llm_end frees its context and tells us.
    context: Callable[[], object | None]
    metadata: dict[str, Any]
    scope: _Scope | None = None
    closed: bool = field(default=False)


class UsageWardenHooks(RunHooks[Any]):
    """Run hooks that wait for capacity before each model call and record it after.

    ``on_llm_start`` reserves an estimate on the limiter and waits until it
    fits: input tokens at one per four characters of the system prompt and
    input items (``estimate_tokens``), plus ``max_output_tokens`` (or the
    agent's ``model_settings.max_tokens`` when lower). ``on_llm_end``
    settles the reservation to ``response.usage`` (input and output tokens,
    cached and cache-write input tokens) and records one event.

    Attribution: the event's agent is ``agent_id`` if given, else the agent
    given to the enclosing ``warden.run(agent_id=...)``, else the SDK agent's name
    (the same order as the pydantic-ai integration); consumer, task and
    ``run_id`` come from ``consumer_id`` or the enclosing ``with warden.run(...)``.
    The limiter key is ``key`` if given, else the model name
    (``RunConfig.model`` is not visible to hooks).
    """

    def _agent_id(self, agent: Any) -> str | None:
        if self.agent_id is not None:
            return self.agent_id
        run = _current_run.get()
        if run is not None and run.explicit_agent_id is not None:
            return None  # the agent the run was given
        return clip_id(agent.name)

    def __init__(
        self,
        warden: Warden,
        *,
        max_output_tokens: int = 1024,
        consumer_id: str | None = None,
        agent_id: str | None = None,
        key: Any = None,
        timeout: float | None = None,
    ) -> None:
        self.max_output_tokens = checked_adapter_args(
            warden, max_output_tokens=max_output_tokens, agent_id=agent_id, consumer_id=consumer_id
        )
        self.warden = warden
        self.consumer_id = consumer_id
        self.agent_id = agent_id
        self.key = key
        self.timeout = timeout
        self._lock = threading.Lock()
        #: Open calls by id() of their run's context wrapper, oldest first.
        self._open: dict[int, list[_Open]] = {}

    @property
    def open_calls(self) -> int:
        """Calls started and not yet ended (or closed by a guard)."""
        with self._lock:
            return sum(len(entries) for entries in self._open.values())

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        await self.close_abandoned()
        sync_provider_client(self.warden, agent.model, self.key)
        metadata: dict[str, Any] = {"integration": "openai-agents"}
        trace = get_current_trace()
        trace_id = getattr(trace, "trace_id", None)
        if isinstance(trace_id, str) and trace_id and trace_id != "no-op":
            metadata["trace_id"] = trace_id
        call = self.warden.call(
            _model_name(agent),
            key=self.key,
            agent_id=self._agent_id(agent),
            consumer_id=self.consumer_id,
            input_tokens=estimate_tokens(system_prompt, input_items),
            max_output_tokens=self._max_output(agent),
            timeout=self.timeout,
            metadata=metadata,
        )
        await call.__aenter__()  # waits for capacity; finishes in on_llm_end or a guard
        entry = _Open(call, agent, _weak(context), metadata, _scope.get())
        with self._lock:
            self._open.setdefault(id(context), []).append(entry)
            if entry.scope is not None:
                entry.scope.entries.append(entry)

    async def on_llm_end(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        response: ModelResponse,
    ) -> None:
        entry = self._take(context, agent)
        if entry is None:
            # A call started elsewhere (say, a run resumed from a saved state):
            # it already happened, so it is recorded without waiting on the limiter.
            metadata: dict[str, Any] = {"integration": "openai-agents", "unmatched": True}
            call = self.warden.call(
                _model_name(agent),
                key=self.key,
                agent_id=self._agent_id(agent),
                consumer_id=self.consumer_id,
                metadata=metadata,
            )
            call.begin_unlimited()
            entry = _Open(call, agent, _weak(context), metadata)
        usage = response.usage
        if response.response_id:
            entry.metadata["response_id"] = response.response_id
        if response.request_id:
            entry.metadata["provider_request_id"] = response.request_id
        if usage.requests > 1:
            entry.metadata["requests"] = usage.requests  # the SDK retried within this call
        details = usage.input_tokens_details
        # A stream without a usage chunk reports requests=1 and no tokens: not free.
        settle_reported(
            entry.call,
            input_tokens=count(usage.input_tokens),
            output_tokens=count(usage.output_tokens),
            cache_read_tokens=count(getattr(details, "cached_tokens", 0)),
            cache_write_tokens=count(getattr(details, "cache_write_tokens", 0)),
            output_chars=text_chars(response.output),
            framework="the OpenAI Agents SDK",
            how_to_report="Servers other than api.openai.com get stream_options.include_usage "
            "only with ModelSettings(include_usage=True).",
        )
        await entry.call.finish()

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """``async with hooks.guard(): await Runner.run(..., hooks=hooks)``.

        Closes the calls started inside the block that the SDK never ended:
        with the block's exception if it raised (tokens refunded, request
        counted, failure recorded), else as failed with ``CallAbandoned``.
        Guards nest; each closes only its own calls.
        """
        scope = _Scope()
        token = _scope.set(scope)
        try:
            yield
        except BaseException as exc:
            await self._close(scope.entries, exc)
            raise
        else:
            await self._close(scope.entries, CallAbandoned("the run ended before on_llm_end"))
        finally:
            _scope.reset(token)

    async def close_abandoned(self) -> int:
        """Closes, as failed with ``CallAbandoned``, the open calls whose run
        context no longer exists; returns how many. Hook calls do this first."""
        with self._lock:
            dead = [e for entries in self._open.values() for e in entries if e.context() is None]
        return await self._close(dead, CallAbandoned("the run ended before on_llm_end"))

    def _take(self, context: object, agent: object) -> _Open | None:
        """The oldest open call of this context and agent, removed."""
        with self._lock:
            entries = self._open.get(id(context), [])
            for index, entry in enumerate(entries):
                if entry.agent is agent and entry.context() is context:
                    del entries[index]
                    if not entries:
                        del self._open[id(context)]
                    entry.closed = True
                    return entry
        return None

    async def _close(self, entries: list[_Open], exc: BaseException) -> int:
        with self._lock:
            closing = [e for e in entries if not e.closed]
            for entry in closing:
                entry.closed = True
                for key, open_entries in list(self._open.items()):
                    if entry in open_entries:
                        open_entries.remove(entry)
                        if not open_entries:
                            del self._open[key]
        for entry in closing:
            await entry.call.finish(exc)
        return len(closing)

    def _max_output(self, agent: Agent[Any]) -> int:
        """``max_output_tokens``, or the agent's own cap on output when that is lower."""
        cap = getattr(getattr(agent, "model_settings", None), "max_tokens", None)
        return output_reserve(self.max_output_tokens, cap)

    def __repr__(self) -> str:
        return (
            f"UsageWardenHooks(max_output_tokens={self.max_output_tokens}, "
            f"open_calls={self.open_calls})"
        )


def estimate_tokens(system_prompt: str | None, input_items: object) -> int:
    """Input tokens of a model call by the chars/4 heuristic, rounded up.

    Counts the system prompt and every string in the input items (their
    roles, types and ids too: a small overestimate); inline binary (base64
    ``data``, ``data:`` URLs) is skipped, as providers bill images by size.
    English text runs at about four characters per token; the settle after
    the call corrects the limiter.
    """
    return estimate_text_tokens(system_prompt, input_items)


def _model_name(agent: Agent[Any]) -> str | None:
    """The model an agent calls: its name, a Model's ``model``, or the SDK default."""
    model = agent.model
    if model is None:
        name: object = get_default_model()
    elif isinstance(model, str):
        name = model
    else:
        name = getattr(model, "model", None)
    return clip_id(name)


def _weak(context: object) -> Callable[[], object | None]:
    try:
        return weakref.ref(context)
    except TypeError:  # a context type without weak references: held until its call ends
        return lambda: context
