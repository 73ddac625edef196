"""The one error shape of every usagewarden response:
``{"detail": {"code": ..., "message": ..., ...}}``."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException


def error_detail(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **extra}


def api_error(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> HTTPException:
    return HTTPException(status, detail=error_detail(code, message, **extra), headers=headers)
