"""The chat page: GET / and its assets, plain files shipped in the package (no build, no CDN).

POST / stays the tutorial's legacy endpoint; only GET is answered here.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from loragate.server.errors import NotFoundError
from loragate.server.openapi import errors

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
ASSET_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page may talk to its own origin only: nothing is fetched from the internet.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidate (ETag), so an upgraded gateway serves its new page
}

# In the OpenAPI schema too: a method missing from it is taken to be refused (405) on its path.
router = APIRouter(tags=["web page"])


def _of(*media_types: str) -> dict[str, object]:
    return {media_type: {"schema": {"type": "string"}} for media_type in media_types}


@router.get("/", response_class=FileResponse, responses={200: {"content": _of("text/html")}})
async def chat_page() -> FileResponse:
    return FileResponse(
        WEB_DIR / "index.html", media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS
    )


@router.get(
    "/web/{asset}",
    response_class=FileResponse,
    responses={
        200: {"content": _of("text/javascript", "text/css")},
        **errors(404),
    },
)
async def chat_page_asset(asset: str) -> FileResponse:
    media_type = ASSET_TYPES.get(asset)
    if media_type is None:
        raise NotFoundError(f"No web asset '{asset}'. Assets: {', '.join(sorted(ASSET_TYPES))}")
    return FileResponse(WEB_DIR / asset, media_type=media_type, headers=SECURITY_HEADERS)
