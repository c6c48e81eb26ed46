"""The chat page: GET / and its assets, plain files shipped in the package (no build, no CDN).

POST / stays the tutorial's legacy endpoint; only GET is answered here.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from loragate.server.errors import NotFoundError

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
ASSET_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page may talk to its own origin only: nothing is fetched from the internet.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidate (ETag), so an upgraded gateway serves its new page
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def chat_page() -> FileResponse:
    return FileResponse(
        WEB_DIR / "index.html", media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS
    )


@router.get("/web/{asset}")
async def chat_page_asset(asset: str) -> FileResponse:
    media_type = ASSET_TYPES.get(asset)
    if media_type is None:
        raise NotFoundError(f"No web asset '{asset}'. Assets: {', '.join(sorted(ASSET_TYPES))}")
    return FileResponse(WEB_DIR / asset, media_type=media_type, headers=SECURITY_HEADERS)
