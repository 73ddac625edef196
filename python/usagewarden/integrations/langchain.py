"""LangChain integration: limits before a model call, one ledger event after it.

Three pieces, for three places LangChain lets code in:

- ``UsageWardenRateLimiter``: a ``BaseRateLimiter`` for ``rate_limiter=`` on
  any chat model. LangChain asks it only for permission, before each request,
  and never shows it the prompt or the response, so it reserves requests (and
  a fixed number of tokens per request, if given); it records nothing.
- ``UsageWardenCallbackHandler``: records one ``UsageEvent`` per model call from
  the callbacks, with the tokens the provider reported; it limits nothing, but
  given the rate limiter (``rate_limiter=``) it settles the limiter's
  reservations to those tokens.
- ``UsageWardenMiddleware``: a ``create_agent`` middleware that sees the
  request and the response, so it does both, token-aware: it waits for
  capacity on an estimate before the call and settles to the reported usage.

Use the middleware alone, or the rate limiter with the callback handler; the
middleware and the handler together would record each call twice.

Install with ``pip install 'usagewarden[langchain]'``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
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

from .._core import Reservation, UsageEvent  # noqa: E402
from ..errors import RateLimitExceeded  # noqa: E402
from ..limiter_protocol import Limiter  # noqa: E402
from ..warden import Call, Warden, _count  # noqa: E402
from ._shared import (  # noqa: E402
    check_timeout,
    clip_id,
    count,
    estimate_text_tokens,
    output_reserve,
    settle_reported,
    sync_provider_client,
    text_chars,
)

__all__ = [
    "UsageWardenCallbackHandler",
    "UsageWardenMiddleware",
    "UsageWardenRateLimiter",
    "estimate_tokens",
]

logger = logging.getLogger("usagewarden")

#: Where the events this module records come from (``UsageEvent.source``).
SOURCE = "usagewarden.langchain"

#: Reservations a rate limiter keeps for its callback handler to settle; older
#: ones (a limiter used without the handler) stay at their fixed amount.
_PENDING_MAX = 10_000

_HOW_TO_REPORT = (
    "ChatOpenAI with a custom base_url streams usage only with stream_usage=True "
    "(UsageWardenMiddleware turns it on)."
)


class UsageWardenRateLimiter(BaseRateLimiter):
    """``rate_limiter=`` for a chat model, backed by a usagewarden limiter.

    Each request reserves ``requests`` requests and ``tokens_per_request``
    input tokens on ``key`` (LangChain gives a rate limiter no prompt to
    measure). Pass the limiter to ``UsageWardenCallbackHandler(...,
    rate_limiter=...)`` and each reservation is settled, oldest first, to the
    tokens the provider reported for a call, so token limits count real
    usage; alone, the limiter keeps the fixed amount. ``timeout`` bounds a
    blocking wait (``RateLimitExceeded`` when it runs out, and the handler
    records no call: nothing reached the provider); a request larger than a
    limit raises at once.
    """

    def __init__(
        self,
        warden_or_limiter: Warden | Limiter,
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
        elif isinstance(warden_or_limiter, Limiter):
            limiter = warden_or_limiter
        else:
            raise TypeError("warden_or_limiter: must be a usagewarden.Warden or limiter")
        self.limiter = limiter
        self.key = key
        self.requests = _count(requests, "requests")
        self.tokens_per_request = _count(tokens_per_request, "tokens_per_request")
        self.timeout = check_timeout(timeout)
        self._pending: deque[Reservation] = deque(maxlen=_PENDING_MAX)
        limiter.check(key, requests=0)  # names a bad key now, not at the first request

    def settle_oldest(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> bool:
        """Settles the oldest unsettled reservation to a finished call's
        tokens (what the callback handler does); False if none is left."""
        try:
            reservation = self._pending.popleft()
        except IndexError:
            return False
        if not reservation.cancelled:
            reservation.settle(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=cache_read_tokens,
                cache_write_tokens=cache_write_tokens,
            )
        return True

    def acquire(self, *, blocking: bool = True) -> bool:
        """Blocking: waits (in this thread) until the request fits, then True.
        Non-blocking: True if it fits now (and is counted), else False."""
        if not blocking:
            decision = self.limiter.try_acquire(
                self.key, requests=self.requests, input_tokens=self.tokens_per_request
            )
            if decision.reservation is not None:
                self._pending.append(decision.reservation)
            return decision.allowed
        self._pending.append(
            self.limiter.acquire_blocking(
                self.key,
                requests=self.requests,
                input_tokens=self.tokens_per_request,
                timeout=self.timeout,
            )
        )
        return True

    async def aacquire(self, *, blocking: bool = True) -> bool:
        """``acquire`` for asyncio: a blocking wait suspends only this task."""
        if not blocking:
            return self.acquire(blocking=False)
        self._pending.append(
            await self.limiter.acquire(
                self.key,
                requests=self.requests,
                input_tokens=self.tokens_per_request,
                timeout=self.timeout,
            )
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


class UsageWardenCallbackHandler(AsyncCallbackHandler):
    """Records one ``UsageEvent`` per chat-model (or LLM) call, from the callbacks.

    The event carries the provider's token counts (``usage_metadata`` of the
    response message, else ``llm_output["token_usage"]``), cache reads and
    writes (``input_token_details`` ``cache_read`` / ``cache_creation``), the
    model, the time from the call's start to its end, and the LangChain run
    id (``metadata["langchain_run_id"]``, also the event's ``request_id``, so
    an event recorded twice counts once). A call that reported no usage (a
    stream without a usage chunk) keeps an estimate of its input and output
    (chars/4), marked ``estimated``. A failed call is recorded with no tokens
    and the exception type in ``metadata["error"]``; one stopped by the rate
    limiter's ``timeout`` is not recorded (nothing reached the provider).

    Attribution: ``agent_id`` / ``consumer_id`` if given, else those of the
    enclosing ``with warden.run(...)`` (whose ``run_id`` and usage the call
    also joins), else the ``create_agent(name=...)`` of the agent, else the
    warden's agent and ``"default"``. ``rate_limiter``: the
    ``UsageWardenRateLimiter`` of the same model, whose reservations are then
    settled to the reported tokens.

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
        rate_limiter: UsageWardenRateLimiter | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(warden, Warden):
            raise TypeError("warden: must be a usagewarden.Warden")
        if rate_limiter is not None and not isinstance(rate_limiter, UsageWardenRateLimiter):
            raise TypeError("rate_limiter: must be a UsageWardenRateLimiter or None")
        # Checked now with the ledger's own rules, so a bad name fails here
        # instead of dropping every event later.
        UsageEvent(agent_id or warden.agent_id, consumer_id or "default", action=action)
        self.warden = warden
        self.consumer_id = consumer_id
        self.agent_id = agent_id
        self.action = action
        self.rate_limiter = rate_limiter
        self._lock = threading.Lock()
        self._started: dict[UUID, Call] = {}

    # Starts: a call begun without waiting (the rate limiter waits), keyed by LangChain's run id.

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
        sent = estimate_tokens([m for prompt in messages for m in prompt])
        self._start(run_id, parent_run_id, serialized, metadata, kwargs, sent)

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
        self._start(
            run_id, parent_run_id, serialized, metadata, kwargs, estimate_text_tokens(prompts)
        )

    def _start(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        serialized: Mapping[str, Any] | None,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
        input_tokens: int,
    ) -> None:
        extra: dict[str, Any] = {"langchain_run_id": str(run_id)}
        if parent_run_id is not None:
            extra["langchain_parent_run_id"] = str(parent_run_id)
        params = kwargs.get("invocation_params")
        call = self.warden.call(
            clip_id(_requested_model(serialized, metadata, params)),
            agent_id=self.agent_id or _agent_name(metadata),
            consumer_id=self.consumer_id,
            action=self.action,
            input_tokens=input_tokens,
            metadata=extra,
            request_id=str(run_id),
            source=SOURCE,
        )
        call.begin_unlimited()
        with self._lock:
            self._started[run_id] = call

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
        call = self._pop(run_id, parent_run_id, _reported_model(response))
        if call.model is None:
            call.model = clip_id(_reported_model(response))
        _settle_tokens(call, _usage_of_result(response) or _Tokens(), _output_chars(response))
        if self.rate_limiter is not None and call.usage is not None:
            self.rate_limiter.settle_oldest(
                call.usage.input_tokens,
                call.usage.output_tokens,
                call.usage.cache_read_tokens,
                call.usage.cache_write_tokens,
            )
        await call.finish()

    async def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(error, RateLimitExceeded):
            # The rate limiter gave up before the request was sent: no call happened.
            with self._lock:
                self._started.pop(run_id, None)
            return
        call = self._pop(run_id, parent_run_id, None)
        if self.rate_limiter is not None:
            self.rate_limiter.settle_oldest(0, 0)
        await call.finish(error)

    def _pop(self, run_id: UUID, parent_run_id: UUID | None, model: str | None) -> Call:
        """The call started for ``run_id``; one begun now if its start was missed."""
        with self._lock:
            call = self._started.pop(run_id, None)
        if call is not None:
            return call
        extra = {"langchain_run_id": str(run_id)}
        if parent_run_id is not None:
            extra["langchain_parent_run_id"] = str(parent_run_id)
        call = self.warden.call(
            clip_id(model),
            agent_id=self.agent_id,
            consumer_id=self.consumer_id,
            action=self.action,
            metadata=extra,
            request_id=str(run_id),
            source=SOURCE,
        )
        return call.begin_unlimited()


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
        self.timeout = check_timeout(timeout)

    def _call(self, request: ModelRequest[Any], *, blocking: bool) -> Call:
        sync_provider_client(self.warden, request.model, self.key)
        kwargs: dict[str, Any] = {
            "key": self.key,
            "agent_id": self.agent_id or _agent_name(_runnable_metadata()),
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
        return output_reserve(
            self.max_output_tokens,
            request.model_settings.get("max_tokens"),
            request.model_settings.get("max_output_tokens"),
            getattr(request.model, "max_tokens", None),
        )

    @staticmethod
    def _with_stream_usage(request: ModelRequest[Any]) -> ModelRequest[Any]:
        """Asks a model that can report usage in streams but was not told to
        (ChatOpenAI's ``stream_usage`` is unset on a custom ``base_url``) to
        do so, on a copy of the model (the user's object is left alone)."""
        model = request.model
        if getattr(model, "stream_usage", False) is not None:
            return request
        copy = getattr(model, "model_copy", None)
        if not callable(copy):
            return request
        return request.override(model=copy(update={"stream_usage": True}))

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]:
        with self._call(request, blocking=True) as call:
            response = handler(self._with_stream_usage(request))
            _settle(call, response)
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]:
        async with self._call(request, blocking=False) as call:
            response = await handler(self._with_stream_usage(request))
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
    parts = [m for m in (system_message, *messages) if m is not None]
    return estimate_text_tokens(
        [getattr(m, "content", m) for m in parts], [getattr(m, "tool_calls", None) for m in parts]
    )


def _settle(call: Call, response: object) -> None:
    """Settles ``call`` from the response's first AI message that reports
    usage; a response none of whose messages does keeps the estimate, marked."""
    if isinstance(response, ExtendedModelResponse):
        response = response.model_response
    messages: list[Any] = response.result if isinstance(response, ModelResponse) else [response]
    tokens = next(
        (t for t in map(_usage_of_message, messages) if t is not None and (t.input or t.output)),
        _Tokens(),
    )
    output_chars = text_chars([getattr(m, "content", None) for m in messages]) + text_chars(
        [getattr(m, "tool_calls", None) for m in messages]
    )
    _settle_tokens(call, tokens, output_chars)


def _settle_tokens(call: Call, tokens: _Tokens, output_chars: int) -> None:
    settle_reported(
        call,
        input_tokens=tokens.input,
        output_tokens=tokens.output,
        cache_read_tokens=tokens.cache_read,
        cache_write_tokens=tokens.cache_write,
        output_chars=output_chars,
        framework="LangChain",
        how_to_report=_HOW_TO_REPORT,
    )


def _output_chars(result: LLMResult) -> int:
    """Characters the call produced: the first candidate of each prompt."""
    chars = 0
    for candidates in result.generations:
        for generation in candidates[:1]:
            message = getattr(generation, "message", None)
            chars += text_chars(getattr(message, "content", None) or generation.text)
            chars += text_chars(getattr(message, "tool_calls", None))
    return chars


def _runnable_metadata() -> Mapping[str, Any] | None:
    """The metadata of the runnable being run (``create_agent`` puts its name there)."""
    try:
        from langgraph.config import get_config

        metadata = get_config().get("metadata")
    except Exception:  # outside a graph run, or no langgraph
        return None
    return metadata if isinstance(metadata, Mapping) else None


def _agent_name(metadata: Mapping[str, Any] | None) -> str | None:
    """``create_agent(name=...)``, which LangChain passes down as ``lc_agent_name``."""
    return clip_id((metadata or {}).get("lc_agent_name"))


def _usage_of_message(message: object) -> _Tokens | None:
    usage = getattr(message, "usage_metadata", None)
    if not isinstance(usage, Mapping):
        return None
    details = usage.get("input_token_details")
    details = details if isinstance(details, Mapping) else {}
    return _Tokens(
        input=count(usage.get("input_tokens")),
        output=count(usage.get("output_tokens")),
        cache_read=count(details.get("cache_read")),
        cache_write=count(details.get("cache_creation")),
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
        input=count(usage.get("prompt_tokens", usage.get("input_tokens"))),
        output=count(usage.get("completion_tokens", usage.get("output_tokens"))),
        cache_read=count(details.get("cached_tokens", usage.get("cache_read_input_tokens"))),
        cache_write=count(usage.get("cache_creation_input_tokens")),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _chat_model_name(model: object) -> str | None:
    """The model a chat model object calls (the attribute names providers use)."""
    for attr in ("model_name", "model", "model_id", "deployment_name"):
        name = _text(getattr(model, attr, None))
        if name is not None:
            return clip_id(name)
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
