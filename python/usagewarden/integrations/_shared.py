"""What the agent-framework adapters share: the input estimate, the output
reserve, argument checks, identifier clipping and settling a call to what the
provider reported (or to the estimate, marked, when it reported nothing)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from .._core import MAX_ID_CHARS
from ..warden import Call

logger = logging.getLogger("usagewarden")

#: Characters per token of the estimate: about right for English text with
#: GPT/Claude tokenizers, and an overestimate for the framing counted with it.
CHARS_PER_TOKEN = 4

#: Keys whose values are inline binary (images, files), not text a model reads as tokens.
BINARY_KEYS = frozenset({"data", "base64", "file_data"})

_warned: set[str] = set()


def text_chars(value: object) -> int:
    """Characters of text in ``value``: strings, mappings, sequences and
    pydantic models (``model_dump``), leaving out inline binary (base64
    ``data``, ``data:`` URLs), which providers bill by size, not characters."""
    if isinstance(value, str):
        return 0 if value.startswith("data:") else len(value)
    if isinstance(value, Mapping):
        return sum(text_chars(v) for k, v in value.items() if k not in BINARY_KEYS)
    if isinstance(value, list | tuple):
        return sum(text_chars(v) for v in value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return text_chars(dump())
    return 0


def tokens_of_chars(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def estimate_text_tokens(*values: object) -> int:
    """Tokens of ``values`` by the chars/4 heuristic, rounded up."""
    return tokens_of_chars(sum(text_chars(v) for v in values))


def count(value: object) -> int:
    """A count a provider reported, or 0 for anything that is not one."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, value)


def output_reserve(default: int, *caps: object) -> int:
    """The output tokens to reserve: ``default``, or a request's own cap
    (``max_tokens``…) when that is lower; caps that are not counts are ignored."""
    valid = [c for c in caps if isinstance(c, int) and not isinstance(c, bool) and c >= 0]
    return min([default, *valid])


def check_timeout(timeout: object) -> float | None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
    ):
        raise ValueError(f"timeout must be a number >= 0 or None, got {timeout!r}")
    return timeout


def clip_id(name: object) -> str | None:
    """A framework's name for something, cut to the ledger's identifier length."""
    return name[:MAX_ID_CHARS] if isinstance(name, str) and name else None


def settle_reported(
    call: Call,
    *,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    output_chars: int | None = None,
    framework: str,
    how_to_report: str,
) -> None:
    """Settles ``call`` to what the provider reported. A response that
    reported no tokens at all (a stream without a usage chunk) is not free:
    it keeps the input estimate, counts the output it streamed (``output_chars``
    by the heuristic, else the reserve), is marked ``estimated``, and a
    warning says once per framework how to turn usage reporting on."""
    if input_tokens or output_tokens:
        call.settle(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
        )
        return
    if framework not in _warned:
        _warned.add(framework)
        logger.warning(
            "usagewarden: %s reported no token usage for a call to %r (a stream without a "
            "usage chunk?); its estimate is counted and marked estimated. %s",
            framework,
            call.model,
            how_to_report,
        )
    output = None if output_chars is None else tokens_of_chars(output_chars)
    call.settle(output_tokens=output, estimated=True)


def chat_completions_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """``settings`` with the OpenAI Chat Completions stream usage turned on."""
    merged = dict(settings or {})
    options = dict(merged.get("stream_options") or {})
    options.setdefault("include_usage", True)
    merged["stream_options"] = options
    return merged


#: Attributes where frameworks keep the provider SDK client of a model object.
_SDK_CLIENT_ATTRS = ("client", "_client", "root_async_client", "async_client", "root_client")


def sync_provider_client(warden: Any, model: object, key: Any = None) -> None:
    """Installs the ``usagewarden.integrations.httpx`` hooks on the provider
    SDK client a model object holds (once per client), so the SDK's retries,
    429s and rate-limit headers reach the warden's limiter. A model with no
    httpx-based client is left as it is."""
    limiter = getattr(warden, "limiter", None)
    if limiter is None or not callable(getattr(limiter, "observe", None)):
        return
    try:
        from .httpx import ProviderSync, model_of
    except ImportError:  # no httpx: nothing to hook into
        return
    for attr in _SDK_CLIENT_ATTRS:
        client = getattr(model, attr, None)
        http = getattr(client, "_client", None)
        hooks = getattr(http, "event_hooks", None)
        if not isinstance(hooks, dict):
            continue
        if any(isinstance(getattr(h, "__self__", None), ProviderSync) for h in hooks["request"]):
            continue  # already synchronised (by this adapter or by the user)
        sync = ProviderSync(limiter, key=model_of if key is None else (lambda _request: key))
        try:
            sync.install(client)
        except TypeError:
            continue
