"""A local OpenAI- and Anthropic-compatible model server for the adapter tests.

A real ASGI app served by uvicorn on 127.0.0.1 (a free port), so the real
provider SDKs talk HTTP to it exactly as they would to the provider. It
answers ``/v1/chat/completions`` (JSON, and SSE with or without a final usage
chunk: ``stream_options.include_usage`` is honoured unless the test turns
stream usage off), ``/v1/messages`` (JSON and SSE, with cache read / creation
tokens) and ``/v1/messages/count_tokens``; it calls the first tool offered
until the conversation holds a tool result; every answer carries the
provider's rate-limit headers; ``fail_next`` scripts 429s with ``Retry-After``.

Every HTTP request it served is kept in ``served`` with the usage it reported,
so a test checks every ledger row against what the provider said.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REPLY = "The answer is forty-two, as computed by the fake provider."


@dataclass(frozen=True)
class Reported:
    """The usage a response reported, in the ledger's terms: ``input`` counts
    every input token (cached ones included), as both providers bill them."""

    input: int
    output: int
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


@dataclass
class Served:
    """One HTTP request the server answered."""

    path: str
    status: int
    model: str | None
    stream: bool
    #: What the response told the client it used; None when it said nothing.
    usage: Reported | None
    tool_call: bool = False
    at: float = field(default_factory=time.monotonic)


@dataclass
class Failure:
    status: int
    retry_after: str | None
    path: str | None


class FakeProvider:
    """The server's behaviour and what it served; tests change the settings
    between calls (``reset()`` restores them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.served: list[Served] = []
        self.reset()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
            ]
        )
        self.base_url = ""

    def reset(self) -> None:
        with self._lock:
            self.served = []
            self._failures: list[Failure] = []
        #: Cached input tokens reported (OpenAI ``cached_tokens``, Anthropic cache reads).
        self.cached_tokens = 0
        #: Anthropic ``cache_creation_input_tokens``.
        self.cache_write_tokens = 0
        #: OpenAI ``completion_tokens_details.reasoning_tokens`` (part of the output).
        self.reasoning_tokens = 0
        #: False: streams never end with a usage chunk, whatever the client asks.
        self.stream_usage = True
        #: Seconds each SSE chunk waits before it is sent (for cancellation tests).
        self.chunk_delay = 0.0
        #: Headers added to every answer: provider rate-limit state.
        self.rate_limit_headers: dict[str, str] = {}

    # Scripting and reading what happened.

    def fail_next(
        self,
        times: int = 1,
        *,
        status: int = 429,
        retry_after: str | None = "2",
        path: str | None = None,
    ) -> None:
        """The next ``times`` requests (to ``path`` only, if given) get ``status``."""
        with self._lock:
            self._failures.extend(Failure(status, retry_after, path) for _ in range(times))

    def completions(self) -> list[Served]:
        """The successful model answers (not token counts, not errors)."""
        with self._lock:
            return [
                s for s in self.served if s.status == 200 and s.path != "/v1/messages/count_tokens"
            ]

    def requests(self, path: str | None = None) -> list[Served]:
        with self._lock:
            return [s for s in self.served if path is None or s.path == path]

    def _log(self, served: Served) -> None:
        with self._lock:
            self.served.append(served)

    def _scripted_failure(self, path: str, model: str | None, stream: bool) -> Response | None:
        with self._lock:
            for index, failure in enumerate(self._failures):
                if failure.path in (None, path):
                    del self._failures[index]
                    break
            else:
                return None
        self._log(Served(path, failure.status, model, stream, None))
        headers = dict(self.rate_limit_headers)
        if failure.retry_after is not None:
            headers["retry-after"] = failure.retry_after
        body = {
            "error": {"message": "rate limited by the fake provider", "type": "rate_limit_error"}
        }
        if path.startswith("/v1/messages"):
            body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
        return JSONResponse(body, status_code=failure.status, headers=headers)

    # Token counting: deterministic, and deliberately not chars/4, so a test
    # can tell a reported count from an adapter's estimate.

    @staticmethod
    def input_tokens_of(body: dict[str, Any]) -> int:
        sent = {k: body.get(k) for k in ("messages", "system", "tools") if body.get(k)}
        return 11 + len(json.dumps(sent, sort_keys=True)) // 5

    def _usage(self, body: dict[str, Any], output_text: str) -> Reported:
        cached = min(self.cached_tokens, self.input_tokens_of(body))
        reasoning = 0 if _is_anthropic(body) else self.reasoning_tokens
        return Reported(
            input=self.input_tokens_of(body)
            + (self.cache_write_tokens if _is_anthropic(body) else 0),
            output=3 + len(output_text.split()) + reasoning,
            cache_read=cached,
            cache_write=self.cache_write_tokens if _is_anthropic(body) else 0,
            reasoning=reasoning,
        )

    # OpenAI chat completions.

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        model = body.get("model")
        stream = bool(body.get("stream"))
        if (failed := self._scripted_failure("/v1/chat/completions", model, stream)) is not None:
            return failed
        tool = _tool_to_call(body.get("tools"), body.get("messages", []), "openai")
        text = "" if tool else REPLY
        reported = self._usage(body, tool[1] if tool else text)
        usage = {
            "prompt_tokens": reported.input,
            "completion_tokens": reported.output,
            "total_tokens": reported.input + reported.output,
            "prompt_tokens_details": {"cached_tokens": reported.cache_read, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reported.reasoning,
                "audio_tokens": 0,
            },
        }
        ids = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "created": int(time.time()),
            "model": model,
        }
        tool_calls = (
            [
                {
                    "id": f"call_{uuid.uuid4().hex[:8]}",
                    "type": "function",
                    "function": {"name": tool[0], "arguments": tool[1]},
                }
            ]
            if tool
            else None
        )
        finish = "tool_calls" if tool else "stop"
        if not stream:
            self._log(Served("/v1/chat/completions", 200, model, False, reported, bool(tool)))
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if tool_calls:
                message["tool_calls"] = tool_calls
            return JSONResponse(
                {
                    **ids,
                    "object": "chat.completion",
                    "choices": [
                        {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
                    ],
                    "usage": usage,
                },
                headers=self.rate_limit_headers,
            )
        include = (
            bool((body.get("stream_options") or {}).get("include_usage")) and self.stream_usage
        )
        self._log(
            Served(
                "/v1/chat/completions", 200, model, True, reported if include else None, bool(tool)
            )
        )

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {
                **ids,
                "object": "chat.completion.chunk",
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
                ],
                **({"usage": None} if include else {}),
            }

        events: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""})]
        if tool_calls:
            call = tool_calls[0]
            events.append(chunk({"tool_calls": [{"index": 0, **call}]}))
        else:
            events.extend(chunk({"content": word + " "}) for word in text.split())
        events.append(chunk({}, finish))
        if include:
            events.append({**ids, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        return self._sse((None, e) for e in events)

    # Anthropic messages.

    async def _messages(self, request: Request) -> Response:
        body = await request.json()
        body["_anthropic"] = True
        model = body.get("model")
        stream = bool(body.get("stream"))
        if (failed := self._scripted_failure("/v1/messages", model, stream)) is not None:
            return failed
        tool = _tool_to_call(body.get("tools"), body.get("messages", []), "anthropic")
        text = "" if tool else REPLY
        reported = self._usage(body, tool[1] if tool else text)
        self._log(Served("/v1/messages", 200, model, stream, reported, bool(tool)))
        # Anthropic's input_tokens leave out what was read from or written to the cache.
        usage = {
            "input_tokens": reported.input - reported.cache_read - reported.cache_write,
            "output_tokens": reported.output,
            "cache_read_input_tokens": reported.cache_read,
            "cache_creation_input_tokens": reported.cache_write,
        }
        block: dict[str, Any] = (
            {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:8]}",
                "name": tool[0],
                "input": json.loads(tool[1]),
            }
            if tool
            else {"type": "text", "text": text}
        )
        message = {
            "id": f"msg_{uuid.uuid4().hex[:12]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "stop_sequence": None,
        }
        stop = "tool_use" if tool else "end_turn"
        if not stream:
            return JSONResponse(
                {**message, "content": [block], "stop_reason": stop, "usage": usage},
                headers=self.rate_limit_headers,
            )
        start_usage = {**usage, "output_tokens": 1}
        events: list[tuple[str | None, dict[str, Any]]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        **message,
                        "content": [],
                        "stop_reason": None,
                        "usage": start_usage,
                    },
                },
            ),
        ]
        if tool:
            events.append(
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {**block, "input": {}},
                    },
                )
            )
            events.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": tool[1]},
                    },
                )
            )
        else:
            events.append(
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            events.extend(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": word + " "},
                    },
                )
                for word in text.split()
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": reported.output},
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return self._sse(iter(events), done=False)

    async def _count_tokens(self, request: Request) -> Response:
        body = await request.json()
        if (
            failed := self._scripted_failure("/v1/messages/count_tokens", body.get("model"), False)
        ) is not None:
            return failed
        self._log(Served("/v1/messages/count_tokens", 200, body.get("model"), False, None))
        return JSONResponse(
            {"input_tokens": self.input_tokens_of(body)}, headers=self.rate_limit_headers
        )

    def _sse(
        self, events: Iterator[tuple[str | None, dict[str, Any]]], done: bool = True
    ) -> Response:
        delay = self.chunk_delay

        async def body() -> AsyncIterator[bytes]:
            for name, data in events:
                if delay:
                    await asyncio.sleep(delay)
                prefix = f"event: {name}\n" if name else ""
                yield f"{prefix}data: {json.dumps(data)}\n\n".encode()
            if done:
                yield b"data: [DONE]\n\n"

        return StreamingResponse(
            body(), media_type="text/event-stream", headers=self.rate_limit_headers
        )


def _is_anthropic(body: dict[str, Any]) -> bool:
    return bool(body.get("_anthropic"))


def _tool_to_call(
    tools: Any, messages: list[dict[str, Any]], dialect: str
) -> tuple[str, str] | None:
    """The first tool offered and arguments that fit its schema, until the
    conversation holds a tool result (then the model answers in text)."""
    if not tools:
        return None
    for message in messages:
        if message.get("role") == "tool":
            return None
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") == "tool_result" for part in content
        ):
            return None
    tool = tools[0]
    if dialect == "openai":
        name, schema = tool["function"]["name"], tool["function"].get("parameters") or {}
    else:
        name, schema = tool["name"], tool.get("input_schema") or {}
    samples = {"string": "Paris", "integer": 3, "number": 1.5, "boolean": True}
    args = {
        prop: samples.get(spec.get("type"), "x")
        for prop, spec in (schema.get("properties") or {}).items()
        if prop in (schema.get("required") or [])
    }
    return name, json.dumps(args)


class ProviderServer:
    """``FakeProvider`` on uvicorn in a thread of its own, on a free loopback port."""

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        provider.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(provider.app, log_level="warning", lifespan="off", loop="asyncio")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> FakeProvider:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake provider did not start")
            time.sleep(0.01)
        return self.provider

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


@pytest.fixture(scope="module", name="provider")
def provider_fixture() -> Iterator[FakeProvider]:
    """The fake provider on uvicorn, one per test module (``reset()`` it per test)."""
    with ProviderServer(FakeProvider()) as fake:
        yield fake
