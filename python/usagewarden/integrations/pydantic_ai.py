"""pydantic-ai integration: every model request an agent makes waits for
capacity on the warden's limiter, then leaves one attributed ledger event.

Two ways in, pick one per agent (using both counts each request twice):

- ``RateLimitedModel(model, warden)``, a ``WrapperModel``: the limit sits at
  the model, so it also covers direct ``model.request`` calls and every
  agent sharing the model object.
- ``UsageWardenCapability(warden)`` in ``Agent(capabilities=[...])``: the
  limit sits at the agent's ``wrap_model_request`` hook, with the run's
  ``RunContext`` at hand for attribution.

Before each request the input is estimated (the model's own ``count_tokens``
when it has one, else ``estimate_input_tokens``) and reserved together with
``max_tokens`` from the merged model settings (``DEFAULT_MAX_TOKENS`` when
none is set); the call settles to the ``RequestUsage`` the provider reported.

Attribution: the event's ``run_id`` is ``RunContext.run_id``, unless a
``RunMeter`` is in effect (passed as the run's ``deps``, or an enclosing
``with meter:``): then the meter's run id, consumer and task are used (and its
agent, if it was given one), and pydantic-ai's run id is kept as
``pydantic_ai_run_id``. Non-empty ``str`` attributes ``agent_id`` /
``consumer_id`` / ``task_id`` of the deps win over both, as explicit
attribution does in ``warden.call``. Without a meter the consumer defaults to
the integration's ``consumer_id``. An agent named nowhere else is the
pydantic-ai agent's ``name`` (then the warden's ``agent_id``). The model is
the model's ``model_name``. Nothing needs adding to ``RunContext``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import KW_ONLY, dataclass
from typing import Any

from . import require

require("pydantic_ai", "pydantic-ai")

from pydantic_ai.capabilities import AbstractCapability  # noqa: E402
from pydantic_ai.exceptions import SkipModelRequest  # noqa: E402
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelResponse  # noqa: E402
from pydantic_ai.models import (  # noqa: E402
    KnownModelName,
    Model,
    ModelRequestContext,
    ModelRequestParameters,
    StreamedResponse,
)
from pydantic_ai.models.wrapper import WrapperModel  # noqa: E402
from pydantic_ai.settings import ModelSettings, merge_model_settings  # noqa: E402
from pydantic_ai.tools import RunContext  # noqa: E402
from pydantic_ai.usage import RequestUsage  # noqa: E402
from pydantic_core import to_json  # noqa: E402

from ..warden import Call, RunMeter, Warden, _current_run  # noqa: E402
from ._shared import (  # noqa: E402
    CHARS_PER_TOKEN,
    check_timeout,
    output_reserve,
    settle_reported,
    sync_provider_client,
    text_chars,
    tokens_of_chars,
)

try:  # How pydantic-ai's own model wrappers find the run; not part of its public API.
    from pydantic_ai._run_context import get_current_run_context as _current_run_context
except ImportError:  # pragma: no cover - a pydantic-ai without it: no run context in `request`

    def _current_run_context() -> RunContext[Any] | None:
        return None


__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_TOKENS",
    "RateLimitedModel",
    "UsageWardenCapability",
    "estimate_input_tokens",
]

logger = logging.getLogger("usagewarden")

#: Output tokens reserved for a request whose settings give no ``max_tokens``.
#: Reserving too little would let a burst overshoot the limit; the unused part
#: is refunded when the call settles.
DEFAULT_MAX_TOKENS = 4096

_ATTRIBUTES = ("agent_id", "consumer_id", "task_id")


def estimate_input_tokens(
    messages: Sequence[ModelMessage],
    model_request_parameters: ModelRequestParameters | None = None,
) -> int:
    """Input tokens of a request when the model cannot count them: the
    characters of the messages serialized as pydantic-ai stores them, plus
    the tool definitions and instructions sent alongside, divided by
    ``CHARS_PER_TOKEN`` and rounded up.

    It errs high on purpose (JSON keys, timestamps and base64 file content
    all count), because a reservation that is too small lets the limit be
    exceeded while one that is too large is refunded at settle."""
    history = list(messages)
    chars = _serialized_length(history, lambda: len(ModelMessagesTypeAdapter.dump_json(history)))
    if model_request_parameters is not None:
        params = model_request_parameters
        sent_alongside = [
            *params.function_tools,
            *params.output_tools,
            *(params.instruction_parts or []),
        ]
        chars += _serialized_length(sent_alongside, lambda: len(to_json(sent_alongside)))
    return tokens_of_chars(chars)


def _serialized_length(value: object, dump: Callable[[], int]) -> int:
    try:
        return dump()
    except Exception:  # content pydantic cannot serialize: its repr is still a size
        return len(repr(value))


@dataclass(frozen=True)
class _Attribution:
    """Who a request is billed to, resolved once per request."""

    run: RunMeter | None
    agent_id: str | None
    consumer_id: str | None
    task_id: str | None
    metadata: dict[str, Any]


def _text_attribute(obj: object, name: str) -> str | None:
    value = getattr(obj, name, None)
    return value if isinstance(value, str) and value else None


def _attribution(ctx: RunContext[Any] | None, consumer_id: str | None) -> _Attribution:
    deps = ctx.deps if ctx is not None else None
    run_id = ctx.run_id if ctx is not None else None
    meter = deps if isinstance(deps, RunMeter) else _current_run.get()
    given: dict[str, str | None] = (
        dict.fromkeys(_ATTRIBUTES)
        if isinstance(deps, RunMeter)
        else {name: _text_attribute(deps, name) for name in _ATTRIBUTES}
    )
    unnamed = given["agent_id"] is None and (meter is None or meter.explicit_agent_id is None)
    if unnamed and ctx is not None and ctx.agent is not None:
        # Neither the deps nor the run name the agent: the pydantic-ai agent does.
        given["agent_id"] = ctx.agent.name or None
    if meter is None:
        # No usagewarden run: fall back to the integration's defaults.
        if given["consumer_id"] is None:
            given["consumer_id"] = consumer_id
        metadata = {"run_id": run_id} if run_id else {}
    else:
        # The meter's run id names the event; keep pydantic-ai's alongside it.
        metadata = {"pydantic_ai_run_id": run_id} if run_id and run_id != meter.run_id else {}
    return _Attribution(
        run=meter,
        agent_id=given["agent_id"],
        consumer_id=given["consumer_id"],
        task_id=given["task_id"],
        metadata=metadata,
    )


def _max_output_tokens(settings: ModelSettings | None, default: int) -> int:
    value = (settings or {}).get("max_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value  # the request's own cap, even above the default
    return output_reserve(default)


async def _input_tokens(
    model: Model,
    messages: list[ModelMessage],
    settings: ModelSettings | None,
    params: ModelRequestParameters,
    use_count_tokens: bool,
) -> int:
    if use_count_tokens:
        try:
            counted = await model.count_tokens(messages, settings, params)
        except Exception as exc:  # NotImplementedError, UserError, a failed count request...
            logger.debug(
                "usagewarden: %s cannot count tokens (%s); estimating",
                type(model).__name__,
                type(exc).__name__,
            )
        else:
            if counted.input_tokens > 0:
                return counted.input_tokens
    return estimate_input_tokens(messages, params)


def _check_options(
    warden: object, consumer_id: object, timeout: object, default_max_tokens: object
) -> None:
    if not isinstance(warden, Warden):
        raise TypeError(f"warden must be a usagewarden.Warden, not {type(warden).__name__}")
    if consumer_id is not None and (not isinstance(consumer_id, str) or not consumer_id):
        raise ValueError(f"consumer_id must be a non-empty str or None, got {consumer_id!r}")
    if isinstance(default_max_tokens, bool) or not isinstance(default_max_tokens, int):
        raise TypeError("default_max_tokens must be an int")
    if default_max_tokens < 0:
        raise ValueError(f"default_max_tokens must be >= 0, got {default_max_tokens}")
    check_timeout(timeout)


async def _open_call(
    warden: Warden,
    *,
    model: Model,
    model_name: str | None,
    messages: list[ModelMessage],
    settings: ModelSettings | None,
    params: ModelRequestParameters,
    ctx: RunContext[Any] | None,
    key: Any,
    consumer_id: str | None,
    timeout: float | None,
    default_max_tokens: int,
    use_count_tokens: bool,
) -> Call:
    """The (not yet entered) warden call for one model request."""
    who = _attribution(ctx, consumer_id)
    return warden.call(
        model_name or None,
        key=key,
        agent_id=who.agent_id,
        consumer_id=who.consumer_id,
        task_id=who.task_id,
        run=who.run,
        input_tokens=await _input_tokens(model, messages, settings, params, use_count_tokens),
        max_output_tokens=_max_output_tokens(settings, default_max_tokens),
        timeout=timeout,
        metadata=who.metadata or None,
    )


def _output_chars(response: ModelResponse | None) -> int | None:
    """Characters of what a response produced: text, thinking, tool arguments."""
    if response is None:
        return None
    chars = 0
    for part in response.parts:
        content = getattr(part, "content", None)
        chars += text_chars(content)
        args_json = getattr(part, "args_as_json_str", None)
        if callable(args_json):
            chars += len(args_json()) + text_chars(getattr(part, "tool_name", ""))
    return chars


def _settle(call: Call, usage: RequestUsage, response: ModelResponse | None) -> None:
    """Settles ``call`` to the tokens the provider reported. pydantic-ai's
    own price (``usage.cost``) is not the caller's: the call is priced once
    from the warden's pricing. A response without usage keeps the estimate,
    marked, with the output it produced counted by the heuristic."""
    reported = not usage.unmeasured_requests
    settle_reported(
        call,
        input_tokens=usage.input_tokens if reported else 0,
        output_tokens=usage.output_tokens if reported else 0,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_chars=_output_chars(response),
        framework="pydantic-ai",
        how_to_report="OpenAI-compatible servers report usage in a stream only when asked "
        "(stream_options.include_usage, which pydantic-ai's OpenAIChatModel sends); "
        "check that the server honours it.",
    )


@dataclass(init=False)
class RateLimitedModel(WrapperModel):
    """A model whose every request (streamed or not) waits for the warden's
    limits, then records its usage, attributed to the agent run it serves.

    ``key`` is the limiter key (the wrapped model's name by default);
    ``consumer_id`` the consumer when the run's deps name none; ``timeout``
    the most seconds to wait for capacity (``RateLimitExceeded`` after);
    ``count_tokens=False`` skips the wrapped model's ``count_tokens`` (which
    for some providers is a network call) in favour of the heuristic.

    The run is found where pydantic-ai exposes it to a model: the
    ``run_context`` argument of ``request_stream``, and for ``request`` the
    run context pydantic-ai sets around each request (read as its own
    ``ConcurrencyLimitedModel`` does). Outside an agent run there is none, and
    only an enclosing ``with meter:`` attributes the call.
    """

    warden: Warden
    key: Any
    consumer_id: str | None
    timeout: float | None
    default_max_tokens: int
    use_count_tokens: bool

    def __init__(
        self,
        wrapped: Model | KnownModelName | str,
        warden: Warden,
        *,
        key: Any = None,
        consumer_id: str | None = None,
        timeout: float | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        count_tokens: bool = True,
    ) -> None:
        _check_options(warden, consumer_id, timeout, default_max_tokens)
        super().__init__(wrapped)
        self.warden = warden
        self.key = key
        self.consumer_id = consumer_id
        self.timeout = timeout
        self.default_max_tokens = default_max_tokens
        self.use_count_tokens = count_tokens
        sync_provider_client(warden, self.wrapped, key)

    async def _call(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        ctx: RunContext[Any] | None,
    ) -> Call:
        return await _open_call(
            self.warden,
            model=self.wrapped,
            model_name=self.wrapped.model_name,
            messages=messages,
            # An agent passes settings that already include the model's own; a
            # direct call may not, and the wrapped model merges them itself.
            settings=merge_model_settings(self.wrapped.settings, model_settings),
            params=model_request_parameters,
            ctx=ctx,
            key=self.key,
            consumer_id=self.consumer_id,
            timeout=self.timeout,
            default_max_tokens=self.default_max_tokens,
            use_count_tokens=self.use_count_tokens,
        )

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        """The wrapped request, once the limiter admits its estimate."""
        call = await self._call(
            messages, model_settings, model_request_parameters, _current_run_context()
        )
        async with call:
            response = await self.wrapped.request(
                messages, model_settings, model_request_parameters
            )
            _settle(call, response.usage, response)
        return response

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        """The wrapped stream, once the limiter admits its estimate. The call
        settles when the consumer leaves the stream, to the usage the stream
        reported by then. A stream that fails, is cancelled, or is closed
        before its end (pydantic-ai closes an abandoned one with
        ``GeneratorExit``) refunds its tokens and records the error type."""
        ctx = run_context if run_context is not None else _current_run_context()
        call = await self._call(messages, model_settings, model_request_parameters, ctx)
        async with (
            call,
            self.wrapped.request_stream(
                messages, model_settings, model_request_parameters, run_context
            ) as stream,
        ):
            yield stream
            _settle(call, stream.usage, stream.get())


@dataclass
class UsageWardenCapability(AbstractCapability[Any]):
    """Limits and meters every model request of an agent, attributed from
    its ``RunContext``: ``run_id``, the ``deps`` (a ``RunMeter``, or an object
    with ``agent_id`` / ``consumer_id`` / ``task_id``), the model's name.

    ``consumer_id``, ``key``, ``timeout``, ``default_max_tokens`` and
    ``count_tokens`` mean what they mean for ``RateLimitedModel``.

    It wraps the whole request step (``wrap_model_request``): the reservation
    covers the model call and the hooks inside it, and settles to the
    response the step ends with. So a step that makes several attempts (a
    ``RetryModelRequest`` or fallback) counts as one request with the final
    response's usage, a step skipped by an inner hook (``SkipModelRequest``)
    gives its reservation back, and one that fails, including a streamed
    one the consumer stops by raising, refunds its tokens and records the
    error type. Use ``RateLimitedModel`` to count each attempt separately.
    The model name recorded is ``ctx.model``'s, the run's model.
    """

    warden: Warden
    _: KW_ONLY
    consumer_id: str | None = None
    key: Any = None
    timeout: float | None = None
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    count_tokens: bool = True

    def __post_init__(self) -> None:
        _check_options(self.warden, self.consumer_id, self.timeout, self.default_max_tokens)

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds a live Warden: not constructible from an agent spec

    async def wrap_model_request(
        self,
        ctx: RunContext[Any],
        *,
        request_context: ModelRequestContext,
        handler: Callable[[ModelRequestContext], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        """Waits for capacity, runs the request step, settles to its usage."""
        model = request_context.model
        sync_provider_client(self.warden, model, self.key)
        call = await _open_call(
            self.warden,
            model=model,
            model_name=ctx.model.model_name,
            messages=request_context.messages,
            settings=request_context.model_settings,  # already merged by the agent
            params=request_context.model_request_parameters,
            ctx=ctx,
            key=self.key,
            consumer_id=self.consumer_id,
            timeout=self.timeout,
            default_max_tokens=self.default_max_tokens,
            use_count_tokens=self.count_tokens,
        )
        await call.__aenter__()  # entered by hand: a skipped step leaves no event
        try:
            response = await handler(request_context)
            _settle(call, response.usage, response)
        except SkipModelRequest:
            # An inner hook answered instead of the model: nothing was sent.
            if call.reservation is not None:
                call.reservation.cancel()
            raise
        except BaseException as exc:
            await call.finish(exc)
            raise
        await call.finish()
        return response
