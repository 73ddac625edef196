"""A real uvicorn server on 127.0.0.1 (a free port) in a thread of its own,
and the checks of the usage API's error shape."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn
from usagewarden.fastapi.models import ErrorResponse

GRACE = 30.0


@contextlib.contextmanager
def serving(app: Any, **options: Any) -> Iterator[tuple[str, int]]:
    """Serves `app` until the block ends; yields (host, port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Accepted connections inherit it: no 40 ms Nagle/delayed-ACK stall
    # between a response's head and body.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    options.setdefault("log_level", "warning")
    options.setdefault("access_log", False)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + GRACE
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started, "the server did not start"
        yield host, port
    finally:
        server.should_exit = True
        thread.join(GRACE)
        sock.close()


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error detail of ``response``, checked against the documented shape."""
    assert response.status_code == status, response.text
    ErrorResponse.model_validate(response.json())
    detail: dict[str, Any] = response.json()["detail"]
    assert detail["code"] == code, detail
    return detail


def locs(detail: dict[str, Any]) -> list[list[str | int]]:
    return [error["loc"] for error in detail["errors"]]
