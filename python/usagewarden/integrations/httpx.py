"""Provider-synchronised limits for any httpx-based SDK (openai, anthropic,
and the frameworks built on them).

``ProviderSync(limiter)`` gives httpx event hooks that see every HTTP attempt
the SDK makes, its own retries included:

- each attempt counts as a request on the limiter (``count="retries"``, the
  default, counts only the SDK's retries and calls no Warden call covers, such
  as Anthropic's ``count_tokens``: the first attempt of a model call is the
  request its Warden call already reserved; ``count="all"`` counts every
  attempt, for code with no Warden around the SDK);
- a 429 (or 503) pauses the key for the provider's ``Retry-After`` (or its
  reset header): no call on that key starts before the provider said;
- the provider's remaining/reset headers are passed to ``limiter.observe``,
  so when other apps of the same organisation spend the shared quota, the
  limiter tightens to what the provider reports.

Add it to any httpx client::

    sync = ProviderSync(warden.limiter)
    client = openai.AsyncOpenAI(http_client=httpx.AsyncClient(event_hooks=sync.async_hooks()))

or to a client that already exists: ``sync.install(openai_client)``.

Headers understood (``parse_rate_limit_headers``): OpenAI's
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (resets as
durations such as ``6m0s``, ``1.5s``, ``20ms``), Anthropic's
``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-*``
(resets as RFC 3339 times), ``retry-after`` / ``retry-after-ms``, and the IETF
``RateLimit`` / ``RateLimit-Policy`` fields (draft 11, and the older
``RateLimit-Remaining`` / ``RateLimit-Reset``).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

_CLIENTS: tuple[type, ...] = ()
_ASYNC_CLIENTS: tuple[type, ...] = ()
for _name in ("httpx", "httpx2"):  # the openai and anthropic SDKs moved to httpx2
    try:
        _module = importlib.import_module(_name)
    except ImportError:
        continue
    _CLIENTS += (_module.Client,)
    _ASYNC_CLIENTS += (_module.AsyncClient,)
if not _CLIENTS:
    raise ImportError("usagewarden.integrations.httpx needs httpx (or httpx2): pip install httpx")

__all__ = ["ProviderLimits", "ProviderSync", "parse_duration", "parse_rate_limit_headers"]

logger = logging.getLogger("usagewarden")

#: Statuses whose ``Retry-After`` means "this key is out of capacity".
_PAUSING = frozenset({429, 503})

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")

#: Header dimension names → the limiter's ``observe`` dimension.
_OPENAI = {"requests": "requests", "tokens": "tokens"}
_ANTHROPIC = {
    "requests": "requests",
    "tokens": "tokens",
    "input-tokens": "input_tokens",
    "output-tokens": "output_tokens",
}


@dataclass(frozen=True)
class ProviderLimits:
    """What a response's headers say about the provider's limits. Resets
    and ``pause`` are seconds from when the response was read."""

    pause: float | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    remaining_input_tokens: int | None = None
    remaining_output_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None
    reset_input_tokens: float | None = None
    reset_output_tokens: float | None = None

    def observed(self) -> dict[str, int | float]:
        """The ``limiter.observe`` keyword arguments this carries."""
        return {
            f.name: value
            for f in fields(self)
            if f.name != "pause" and (value := getattr(self, f.name)) is not None
        }


def parse_duration(text: str) -> float | None:
    """A reset as the OpenAI API writes it (``6m0s``, ``1h2m3.5s``, ``1.5s``,
    ``20ms``) or a bare number of seconds; None when it is neither."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 else None
    total, end = 0.0, 0
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    for match in _DURATION.finditer(text):
        if match.start() != end:
            return None
        total += float(match.group(1)) * scale[match.group(2)]
        end = match.end()
    return total if end and end == len(text) else None


def _seconds_until(text: str, now: float) -> float | None:
    """An RFC 3339 or HTTP date as seconds from ``now`` (never negative)."""
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


def _retry_after(headers: Mapping[str, str], now: float) -> float | None:
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    if (value := headers.get("retry-after")) is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return _seconds_until(value, now)


def _structured_items(text: str) -> list[tuple[str, dict[str, str]]]:
    """An RFC 8941 list of ``"name";key=value`` items (enough of it for the
    RateLimit fields: tokens, integers, strings without commas)."""
    items = []
    for member in text.split(","):
        name, *params = (part.strip() for part in member.split(";"))
        if not name:
            continue
        values = {}
        for param in params:
            key, _, value = param.partition("=")
            values[key.strip()] = value.strip().strip('"')
        items.append((name.strip('"'), values))
    return items


def _ietf(headers: Mapping[str, str], found: dict[str, Any]) -> None:
    units = {
        name: params.get("qu", "requests")
        for name, params in _structured_items(headers.get("ratelimit-policy", ""))
    }
    for name, params in _structured_items(headers.get("ratelimit", "")):
        unit = units.get(name, "requests")
        dim = {"requests": "requests", "tokens": "tokens"}.get(unit)
        if dim is None:
            continue  # content-bytes, concurrent-requests: nothing the limiter counts
        remaining, reset = _count(params.get("r")), _count(params.get("t"))
        _keep_lowest(found, dim, remaining, None if reset is None else float(reset))
    # Drafts up to 07: one policy, as plain fields.
    plain_reset = headers.get("ratelimit-reset")
    _keep_lowest(
        found,
        "requests",
        _count(headers.get("ratelimit-remaining")),
        parse_duration(plain_reset) if plain_reset else None,
    )


def _keep_lowest(
    found: dict[str, Any], dim: str, remaining: int | None, reset: float | None
) -> None:
    """Several policies on one dimension: the tightest one binds."""
    if remaining is None:
        return
    current = found.get(f"remaining_{dim}")
    if current is None or remaining < current:
        found[f"remaining_{dim}"] = remaining
        found[f"reset_{dim}"] = reset


def parse_rate_limit_headers(
    headers: Mapping[str, str], status: int = 200, *, now: float | None = None
) -> ProviderLimits:
    """What to pause and observe, from one response's headers (any case).

    ``pause`` is set for a 429/503: its ``Retry-After`` (``retry-after-ms``
    first), else the reset of a dimension the headers show exhausted.
    ``now`` (Unix seconds) is when the response was read, for resets given
    as times."""
    headers = {k.lower(): v for k, v in headers.items()}
    moment = time.time() if now is None else now
    found: dict[str, Any] = {}
    for name, dim in _OPENAI.items():
        remaining = _count(headers.get(f"x-ratelimit-remaining-{name}"))
        reset = headers.get(f"x-ratelimit-reset-{name}")
        if remaining is not None:
            found[f"remaining_{dim}"] = remaining
            found[f"reset_{dim}"] = parse_duration(reset) if reset else None
    for name, dim in _ANTHROPIC.items():
        remaining = _count(headers.get(f"anthropic-ratelimit-{name}-remaining"))
        reset = headers.get(f"anthropic-ratelimit-{name}-reset")
        if remaining is not None:
            found[f"remaining_{dim}"] = remaining
            found[f"reset_{dim}"] = _seconds_until(reset, moment) if reset else None
    if not found:
        _ietf(headers, found)
    pause = _retry_after(headers, moment) if status in _PAUSING else None
    if pause is None and status in _PAUSING:
        exhausted = [
            found[f"reset_{dim}"]
            for dim in ("requests", "tokens", "input_tokens", "output_tokens")
            if found.get(f"remaining_{dim}") == 0 and found.get(f"reset_{dim}") is not None
        ]
        pause = max(exhausted) if exhausted else None
    return ProviderLimits(pause=pause, **found)


def model_of(request: Any) -> str:
    """The default limiter key: the ``model`` of a JSON request body (what
    the Warden keys a call by), else ``"default"``."""
    try:
        body = json.loads(request.content or b"null")
    except Exception:  # a streamed body not read yet, or not JSON
        return "default"
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) and model else "default"


class ProviderSync:
    """httpx event hooks that keep a usagewarden limiter in step with the
    provider (see the module's documentation).

    ``key`` maps a request to its limiter key (the model of the request body
    by default); ``count`` says which attempts count as requests (``"retries"``,
    ``"all"`` or ``"none"``); ``timeout`` bounds the wait for a request slot
    (``RateLimitExceeded`` when it runs out, raised from the SDK's call).
    The limiter needs ``pause`` and ``observe`` (every usagewarden limiter has them).
    """

    def __init__(
        self,
        limiter: Any,
        *,
        key: Callable[[Any], Any] = model_of,
        count: Literal["retries", "all", "none"] = "retries",
        timeout: float | None = None,
    ) -> None:
        for method in ("pause", "observe", "acquire", "acquire_blocking"):
            if not callable(getattr(limiter, method, None)):
                raise TypeError(f"limiter: needs a {method}() method (a usagewarden limiter)")
        if count not in ("retries", "all", "none"):
            raise ValueError(f"count must be 'retries', 'all' or 'none', got {count!r}")
        if not callable(key):
            raise TypeError("key: must be a callable taking the Any")
        self.limiter = limiter
        self.key = key
        self.count = count
        self.timeout = timeout
        #: HTTP attempts seen, and how many of them were counted as extra requests.
        self.attempts = 0
        self.counted = 0

    def _counts(self, request: Any) -> bool:
        if self.count == "none":
            return False
        if self.count == "all":
            return True
        # The Stainless SDKs (openai, anthropic) number each attempt of a call.
        retry = request.headers.get("x-stainless-retry-count", "0")
        return retry not in ("", "0") or request.url.path.endswith("/count_tokens")

    async def on_request(self, request: Any) -> None:
        self.attempts += 1
        if self._counts(request):
            self.counted += 1
            await self.limiter.acquire(self.key(request), requests=1, timeout=self.timeout)

    def on_request_blocking(self, request: Any) -> None:
        self.attempts += 1
        if self._counts(request):
            self.counted += 1
            self.limiter.acquire_blocking(self.key(request), requests=1, timeout=self.timeout)

    def on_response(self, response: Any) -> None:
        """Pauses or tightens the key from the response's headers."""
        seen = parse_rate_limit_headers(response.headers, response.status_code)
        key = self.key(response.request)
        try:
            if seen.pause:
                self.limiter.pause(key, seen.pause)
            observed = seen.observed()
            if observed:
                self.limiter.observe(key, **observed)
        except (TypeError, ValueError):  # a key or value the limiter refuses
            logger.exception("usagewarden: could not apply the provider's rate-limit headers")

    async def on_response_async(self, response: Any) -> None:
        self.on_response(response)

    def async_hooks(self) -> dict[str, list[Callable[..., Any]]]:
        """``event_hooks=`` for an ``httpx.AsyncClient``."""
        return {"request": [self.on_request], "response": [self.on_response_async]}

    def hooks(self) -> dict[str, list[Callable[..., Any]]]:
        """``event_hooks=`` for an ``httpx.Client``."""
        return {"request": [self.on_request_blocking], "response": [self.on_response]}

    def install(self, client: Any) -> Any:
        """Adds the hooks to an httpx client, or to the httpx client inside a
        provider SDK client (openai, anthropic); returns ``client``. Installing
        twice is a no-op."""
        clients = _CLIENTS + _ASYNC_CLIENTS
        http: Any = client if isinstance(client, clients) else None
        if http is None:
            http = getattr(client, "_client", None)  # where the Stainless SDKs keep theirs
        if not isinstance(http, clients):
            raise TypeError("client: must be an httpx client or an SDK client built on one")
        hooks = self.async_hooks() if isinstance(http, _ASYNC_CLIENTS) else self.hooks()
        target: Any = http
        current = target.event_hooks
        if any(getattr(h, "__self__", None) is self for h in current.get("request", [])):
            return client
        target.event_hooks = {
            "request": [*current.get("request", []), *hooks["request"]],
            "response": [*current.get("response", []), *hooks["response"]],
        }
        return client
