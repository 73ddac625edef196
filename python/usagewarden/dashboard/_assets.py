"""The dashboard's page and files, served with a strict
Content-Security-Policy: everything from this origin, nothing inline,
nothing from anywhere else."""

from __future__ import annotations

import html
import importlib.util
import re
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

_STATIC = Path(__file__).with_name("static")

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
#: The files the page loads, by the name it uses.
_FILES = {
    "app.js": "text/javascript",
    "budget_editor.js": "text/javascript",
    "charts.js": "text/javascript",
    "format.js": "text/javascript",
    "panels.js": "text/javascript",
    "style.css": "text/css",
    "plotly-base.css": "text/css",
    "icon.svg": "image/svg+xml",
}


@cache
def plotly_bundle() -> Path | None:
    """The plotly.js bundle the ``plotly`` package ships (extra ``dashboard``),
    found without importing plotly."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bundle = Path(location) / "package_data" / "plotly.min.js"
        if bundle.is_file():
            return bundle
    return None


#: plotly.js bundles CSS of its own (e.g. for maps) that it injects at load
#: unless an element with a given id is already in the page.
_GUARDED_STYLE = re.compile(r'document\.getElementById\("([0-9a-f]{64})"\)')


@cache
def _plotly_guards() -> str:
    """Empty elements carrying the ids that keep plotly.js from injecting
    ``<style>`` elements the Content-Security-Policy would refuse."""
    bundle = plotly_bundle()
    if bundle is None:
        return ""
    ids = dict.fromkeys(_GUARDED_STYLE.findall(bundle.read_text(encoding="utf-8")))
    return "".join(f'<template id="{identifier}"></template>' for identifier in ids)


@cache
def _page_template() -> str:
    return (_STATIC / "index.html").read_text(encoding="utf-8")


def assets_router(path: str, api_prefix: str, title: str, *, authenticated: bool) -> APIRouter:
    """``GET {path}`` (the page) and ``GET {path}static/{name}``. The page
    carries only where the API is and whether it asks for a key."""
    base = path if path.endswith("/") else path + "/"
    router = APIRouter(tags=["dashboard"], include_in_schema=False)

    @router.get(base)
    async def page() -> HTMLResponse:
        body = (
            _page_template()
            .replace("{{title}}", html.escape(title))
            .replace("{{api}}", html.escape(api_prefix, quote=True))
            .replace("{{static}}", html.escape(base + "static/", quote=True))
            .replace("{{auth}}", "key" if authenticated else "none")
            .replace("{{charts}}", "1" if plotly_bundle() is not None else "0")
            .replace("{{plotly_guards}}", _plotly_guards())
        )
        headers = {**_SECURITY_HEADERS, "Cache-Control": "no-store"}
        return HTMLResponse(body, headers=headers)

    if base != "/":

        @router.get(base.rstrip("/"))
        async def page_without_slash() -> Response:
            return Response(status_code=308, headers={"Location": base})

    @router.get(base + "static/{name}")
    async def static(name: str) -> Response:
        headers = {**_SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"}
        if name == "plotly.min.js":
            bundle = plotly_bundle()
            if bundle is None:
                raise HTTPException(
                    404, "plotly is not installed: pip install 'usagewarden[dashboard]'"
                )
            return FileResponse(bundle, media_type="text/javascript", headers=headers)
        media_type = _FILES.get(name)
        if media_type is None:
            raise HTTPException(404, "no such file")
        return FileResponse(_STATIC / name, media_type=media_type, headers=headers)

    return router
