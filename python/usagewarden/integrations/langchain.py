"""LangChain integration: limits before a model call, one ledger event after it.

Three pieces, for three places LangChain lets code in:

- ``UsageWardenRateLimiter``: a ``BaseRateLimiter`` for ``rate_limiter=`` on
  any chat model. LangChain asks it only for permission, before each request,
  and never shows it the prompt or the response, so it counts requests (and a
  fixed number of tokens per request, if given); it records nothing.
- ``UsageWardenCallbackHandler``: records one ``UsageEvent`` per model call from
  the callbacks, with the tokens the provider reported; it limits nothing.
- ``UsageWardenMiddleware``: a ``create_agent`` middleware that sees the
  request and the response, so it does both, token-aware: it waits for
  capacity on an estimate before the call and settles to the reported usage.

Use the middleware alone, or the rate limiter with the callback handler; the
middleware and the handler together would record each call twice.

Install with ``pip install 'usagewarden[langchain]'``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from . import checked_adapter_args, require

require("langchain_core", "langchain")
require("langchain.agents", "langchain")

from langchain.agents.middleware import (  # noqa: E402
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
)
from langchain.agents.middleware.types import ExtendedModelResponse  # noqa: E402
from langchain_core.callbacks import AsyncCallbackHandler  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage  # noqa: E402
from langchain_core.outputs import LLMResult  # noqa: E402
from langchain_core.rate_limiters import BaseRateLimiter  # noqa: E402

from .._core import RateLimiter, Usage, UsageEvent  # noqa: E402
from ..warden import Call, RunMeter, Warden, _count, _current_run  # noqa: E402

__all__ = [
    "UsageWardenCallbackHandler",
    "UsageWardenMiddleware",
    "UsageWardenRateLimiter",
    "estimate_tokens",
]

logger = logging.getLogger("usagewarden")

#: Where the events this module records come from (``UsageEvent.source``).
SOURCE = "usagewarden.langchain"

#: Keys whose values are inline binary (images, files), not text a model reads as tokens.
_BINARY_KEYS = frozenset({"data", "base64", "file_data"})


class UsageWardenRateLimiter(BaseRateLimiter):
    """``rate_limiter=`` for a chat model, backed by a usagewarden limiter.

    Each request reserves ``requests`` requests and ``tokens_per_request``
    input tokens on ``key`` (so a ``total_tokens`` or ``input_tokens`` limit
    sees a fixed cost per request; LangChain gives a rate limiter no prompt
    to measure). The reservation is never settled: the limiter keeps the
    fixed amount. ``timeout`` bounds a blocking wait (``RateLimitExceeded``
    when it runs out); a request larger than a limit raises at once.
    """

    def __init__(
        self,
        warden_or_limiter: Warden | RateLimiter,
        *,
        key: str | tuple[str, ...] = "default",
        requests: int = 1,
        tokens_per_request: int = 0,
        timeout: float | None = None,
    ) -> None:
        if isinstance(warden_or_limiter, Warden):
            if warden_or_limiter.limiter is None:
                raise TypeError("warden_or_limiter: this Warden has no limiter to wait on")
            limiter = warden_or_limiter.limiter
        elif isinstance(warden_or_limiter, RateLimiter):
            limiter = warden_or_limiter
        else:
            raise TypeError("warden_or_limiter: must be a usagewarden.Warden or RateLimiter")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
        ):
            raise ValueError(f"timeout must be a number >= 0 or None, got {timeout!r}")
        self.limiter = limiter
        self.key = key
        self.requests = _count(requests, "requests")
        self.tokens_per_request = _count(tokens_per_request, "tokens_per_request")
        self.timeout = timeout
        limiter.check(key, requests=0)  # names a bad key now, not at the first request

    def acquire(self, *, blocking: bool = True) -> bool:
        """Blocking: waits (in this thread) until the request fits, then True.
        Non-blocking: True if it fits now (and is counted), else False."""
        if not blocking:
            return self.limiter.try_acquire(
                self.key, requests=self.requests, input_tokens=self.tokens_per_request
            ).allowed
        self.limiter.acquire_blocking(
            self.key,
            requests=self.requests,
            input_tokens=self.tokens_per_request,
            timeout=self.timeout,
        )
        return True

    async def aacquire(self, *, blocking: bool = True) -> bool:
        """``acquire`` for asyncio: a blocking wait suspends only this task."""
        if not blocking:
            return self.acquire(blocking=False)
        await self.limiter.acquire(
            self.key,
            requests=self.requests,
            input_tokens=self.tokens_per_request,
            timeout=self.timeout,
        )
        return True

    def __repr__(self) -> str:
        return (
            f"UsageWardenRateLimiter(key={self.key!r}, requests={self.requests}, "
            f"tokens_per_request={self.tokens_per_request}, limiter={self.limiter!r})"
        )


@dataclass(frozen=True)
class _Tokens:
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    def __add__(self, other: _Tokens) -> _Tokens:
        return _Tokens(
            self.input + other.input,
            self.output + other.output,
            self.cache_read + other.cache_read,
            self.cache_write + other.cache_write,
        )


@dataclass(frozen=True)
class _Started:
    at: float
    wall: datetime | None
    model: str | None
    run: RunMeter | None
    parent_run_id: UUID | None


class UsageWardenCallbackHandler(AsyncCallbackHandler):
    """Records one ``UsageEvent`` per chat-model (or LLM) call, from the callbacks.

    The event carries the provider's token counts (``usage_metadata`` of the
    response message, else ``llm_output["token_usage"]``), cache reads and
    writes (``input_token_details`` ``cache_read`` / ``cache_creation``), the
    model, the time from the call's start to its end, and the LangChain run
    id (``metadata["langchain_run_id"]``, also the event's ``request_id``, so
    an event recorded twice counts once). A failed call is recorded with no
    tokens and the exception type in ``metadata["error"]``.

    Attribution: ``agent_id`` / ``consumer_id`` if given, else those of the
    enclosing ``with warden.run(...)`` (whose ``run_id`` and usage the call
    also joins), else the warden's agent and ``"default"``.

    An async handler, so in async code it records on the running loop; in
    sync code LangChain runs its coroutines to completion before returning.
    It never waits for capacity: pair it with ``UsageWardenRateLimiter``.
    LangChain starts the callbacks before a model's rate limiter, so the
    event's timestamp and duration include any wait for capacity.
    """

    def __init__(
        self,
        warden: Warden,
        *,
        consumer_id: str | None = None,
        agent_id: str | None = None,
        action: str = "llm.request",
    ) -> None:
        super().__init__()
        if not isinstance(warden, Warden):
            raise TypeError("warden: must be a usagewarden.Warden")
        # Checked now with the ledger's own rules, so a bad name fails here
        # instead of dropping every event later.
        UsageEvent(agent_id or warden.agent_id, consumer_id or "default", action=action)
        self.warden = warden
        self.consumer_id = consumer_id
        self.agent_id = agent_id
        self.action = action
        self._lock = threading.Lock()
        self._started: dict[UUID, _Started] = {}

    # Starts: remember when, what model and which run (keyed by LangChain's run id).

    async def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, parent_run_id, serialized, metadata, kwargs)

    async def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, parent_run_id, serialized, metadata, kwargs)

    def _start(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        serialized: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> None:
        started = _Started(
            at=self.warden._now(),
            wall=self.warden._wall_time(),
            model=_requested_model(serialized, metadata, kwargs.get("invocation_params")),
            run=_current_run.get(),
            parent_run_id=parent_run_id,
        )
        with self._lock:
            self._started[run_id] = started

    # Ends: one event each.

    async def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        started = self._pop(run_id)
        tokens = _usage_of_result(response)
        extra: dict[str, Any] = {} if tokens is not None else {"usage_reported": False}
        model = started.model if started is not None else None
        await self._record(
            run_id,
            parent_run_id,
            started,
            model or _reported_model(response),
            tokens or _Tokens(),
            extra,
            failed=False,
        )

    async def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        started = self._pop(run_id)
        model = started.model if started is not None else None
        extra = {"error": type(error).__name__}
        await self._record(run_id, parent_run_id, started, model, _Tokens(), extra, failed=True)

    def _pop(self, run_id: UUID) -> _Started | None:
        with self._lock:
            return self._started.pop(run_id, None)

    async def _record(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        started: _Started | None,
        model: str | None,
        tokens: _Tokens,
        extra: dict[str, Any],
        *,
        failed: bool,
    ) -> None:
        run = started.run if started is not None else _current_run.get()
        if run is not None:
            run._add(
                Usage(
                    requests=1,
                    input_tokens=tokens.input,
                    output_tokens=tokens.output,
                    cache_read_tokens=tokens.cache_read,
                    cache_write_tokens=tokens.cache_write,
                ),
                failed=failed,
            )
        if self.warden.store is None:
            return
        metadata: dict[str, Any] = {"langchain_run_id": str(run_id)}
        parent = parent_run_id or (started.parent_run_id if started is not None else None)
        if parent is not None:
            metadata["langchain_parent_run_id"] = str(parent)
        if run is not None:
            metadata["run_id"] = run.run_id
        metadata.update(extra)
        duration = 0.0 if started is None else self.warden._now() - started.at
        try:
            event = UsageEvent(
                self.agent_id or (run.agent_id if run else self.warden.agent_id),
                self.consumer_id or (run.consumer_id if run else "default"),
                task_id=run.task_id if run else None,
                namespace=self.warden.namespace,
                action=self.action,
                model=model[:256] if model else None,
                tokens_in=tokens.input,
                tokens_out=tokens.output,
                cache_read_tokens=tokens.cache_read,
                cache_write_tokens=tokens.cache_write,
                duration_ms=max(0, round(duration * 1000)),
                api_calls=1,
                timestamp=started.wall if started is not None else self.warden._wall_time(),
                request_id=str(run_id),
                source=SOURCE,
                metadata=metadata,
            )
        except (TypeError, ValueError):
            logger.exception("usagewarden: could not build the usage event of a LangChain call")
            return
        await self.warden._record(event)


class UsageWardenMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """``create_agent(..., middleware=[UsageWardenMiddleware(warden)])``: every
    model call of the agent waits for capacity, then is settled and recorded.

    Before the call it reserves an estimate: input tokens by the usual
    heuristic of one token per four characters of the messages (system
    message included, inline images and files left out; see
    ``estimate_tokens``), plus ``max_output_tokens`` (or the model's own
    ``max_tokens`` when lower). After it, the reservation is settled to the
    response's ``usage_metadata`` (cache reads and writes included), so the
    limits count what was used; a call that raises is refunded and recorded as
    failed; a response without usage keeps its estimate, marked ``estimated``.

    Middleware nests first-outermost: list this one last to meter each
    attempt of a retrying middleware as its own call. Attribution comes from
    ``agent_id`` / ``consumer_id`` if given, else from the enclosing
    ``with warden.run(...)``. The limiter key is ``key`` if given, else the
    model name. A sync agent (``invoke``) waits and records in its own
    thread through ``warden.call_blocking``, so its store must be a
    ``SQLiteStore`` (or an ``AsyncSQLiteStore`` with ``blocking()``).
    """

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
        super().__init__()
        self.max_output_tokens = checked_adapter_args(
            warden, max_output_tokens=max_output_tokens, agent_id=agent_id, consumer_id=consumer_id
        )
        self.warden = warden
        self.consumer_id = consumer_id
        self.agent_id = agent_id
        self.key = key
        self.timeout = timeout

    def _call(self, request: ModelRequest[Any], *, blocking: bool) -> Call:
        kwargs: dict[str, Any] = {
            "key": self.key,
            "agent_id": self.agent_id,
            "consumer_id": self.consumer_id,
            "input_tokens": estimate_tokens(request.messages, request.system_message),
            "max_output_tokens": self._max_output(request),
            "timeout": self.timeout,
            "metadata": {"integration": "langchain"},
        }
        model = _chat_model_name(request.model)
        if blocking:
            return self.warden.call_blocking(model, **kwargs)
        return self.warden.call(model, **kwargs)

    def _max_output(self, request: ModelRequest[Any]) -> int:
        """``max_output_tokens``, or the call's own cap on output when that is lower."""
        caps = [self.max_output_tokens]
        for value in (
            request.model_settings.get("max_tokens"),
            request.model_settings.get("max_output_tokens"),
            getattr(request.model, "max_tokens", None),
        ):
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                caps.append(value)
        return min(caps)

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]:
        with self._call(request, blocking=True) as call:
            response = handler(request)
            _settle(call, response)
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]:
        async with self._call(request, blocking=False) as call:
            response = await handler(request)
            _settle(call, response)
        return response

    def __repr__(self) -> str:
        return (
            f"UsageWardenMiddleware(max_output_tokens={self.max_output_tokens}, "
            f"agent_id={self.agent_id!r}, consumer_id={self.consumer_id!r})"
        )


def estimate_tokens(
    messages: Sequence[BaseMessage], system_message: BaseMessage | None = None
) -> int:
    """Input tokens of a request by the chars/4 heuristic, rounded up.

    Counts the text of every message (``system_message`` too) and the names
    and arguments of its tool calls; inline binary (base64 ``data``, ``data:``
    URLs) is skipped, as providers bill images by size, not by characters.
    English text runs at about four characters per token; code and other
    languages run denser, and the settle after the call corrects the limiter.
    """
    chars = 0
    for message in [system_message, *messages]:
        if message is None:
            continue
        chars += _text_chars(getattr(message, "content", message))
        chars += _text_chars(getattr(message, "tool_calls", None))
    return math.ceil(chars / 4)


def _text_chars(value: object) -> int:
    if isinstance(value, str):
        return 0 if value.startswith("data:") else len(value)
    if isinstance(value, Mapping):
        return sum(_text_chars(v) for k, v in value.items() if k not in _BINARY_KEYS)
    if isinstance(value, list | tuple):
        return sum(_text_chars(v) for v in value)
    return 0


def _settle(call: Call, response: object) -> None:
    """Settles ``call`` from the response's first AI message that reports usage."""
    if isinstance(response, ExtendedModelResponse):
        response = response.model_response
    messages: list[Any] = response.result if isinstance(response, ModelResponse) else [response]
    for message in messages:
        tokens = _usage_of_message(message)
        if tokens is not None:
            call.settle(
                input_tokens=tokens.input,
                output_tokens=tokens.output,
                cache_read_tokens=tokens.cache_read,
                cache_write_tokens=tokens.cache_write,
            )
            return


def _usage_of_message(message: object) -> _Tokens | None:
    usage = getattr(message, "usage_metadata", None)
    if not isinstance(usage, Mapping):
        return None
    details = usage.get("input_token_details")
    details = details if isinstance(details, Mapping) else {}
    return _Tokens(
        input=_int(usage.get("input_tokens")),
        output=_int(usage.get("output_tokens")),
        cache_read=_int(details.get("cache_read")),
        cache_write=_int(details.get("cache_creation")),
    )


def _usage_of_result(result: LLMResult) -> _Tokens | None:
    """The call's usage: per prompt, the first candidate message that reports
    it (the candidates of one prompt share one response and its usage); else
    the provider's ``llm_output`` totals; None when nothing reports usage."""
    total: _Tokens | None = None
    for candidates in result.generations:
        for generation in candidates:
            tokens = _usage_of_message(getattr(generation, "message", None))
            if tokens is not None:
                total = tokens if total is None else total + tokens
                break
    if total is not None:
        return total
    output = result.llm_output or {}
    usage = output.get("token_usage") or output.get("usage")
    if not isinstance(usage, Mapping):
        return None
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    details = details if isinstance(details, Mapping) else {}
    return _Tokens(
        input=_int(usage.get("prompt_tokens", usage.get("input_tokens"))),
        output=_int(usage.get("completion_tokens", usage.get("output_tokens"))),
        cache_read=_int(details.get("cached_tokens", usage.get("cache_read_input_tokens"))),
        cache_write=_int(usage.get("cache_creation_input_tokens")),
    )


def _int(value: object) -> int:
    """A reported count, or 0 for anything that is not a count."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, value)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _chat_model_name(model: object) -> str | None:
    """The model a chat model object calls (the attribute names providers use)."""
    for attr in ("model_name", "model", "model_id", "deployment_name"):
        name = _text(getattr(model, attr, None))
        if name is not None:
            return name[:256]
    return None


def _requested_model(
    serialized: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    invocation_params: object,
) -> str | None:
    """The model a call asked for: LangChain's tracing metadata, else the
    invocation parameters, else the serialized constructor arguments."""
    if metadata and (name := _text(metadata.get("ls_model_name"))):
        return name
    for source in (invocation_params, (serialized or {}).get("kwargs")):
        if isinstance(source, Mapping):
            for attr in ("model", "model_name", "model_id"):
                if name := _text(source.get(attr)):
                    return name
    return None


def _reported_model(result: LLMResult) -> str | None:
    """The model the provider says answered (when the start named none)."""
    for candidates in result.generations:
        for generation in candidates:
            meta = getattr(getattr(generation, "message", None), "response_metadata", None)
            if isinstance(meta, Mapping):
                for attr in ("model_name", "model"):
                    if name := _text(meta.get(attr)):
                        return name
    output = result.llm_output or {}
    return _text(output.get("model_name")) or _text(output.get("model"))
