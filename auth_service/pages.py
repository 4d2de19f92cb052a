"""HTML pages (the ones behind mailed links): rendered from `templates/pages/`, and sent
with the headers that keep a page holding a token safe.

The pages run no script and load nothing: the one stylesheet is inline, allowed by its
hash in a strict Content-Security-Policy; forms post only to us; no site may frame them
(clickjacking). The token is in the URL, so nothing is cached, indexed or sent on as a
referrer.
"""

import base64
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from markupsafe import Markup

from auth_service import templating
from auth_service.config import Settings

STYLESHEET = "pages/style.css"


def csp_hash(inline: str) -> str:
    """The CSP source that allows exactly this inline script or style."""
    return f"'sha256-{base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()}'"


@lru_cache(maxsize=8)
def stylesheet(templates_dir: Path | None) -> tuple[Markup, str]:
    """The stylesheet (the package's, or TEMPLATES_DIR's) and its CSP source, read once."""
    css = templating.template_source(templates_dir, STYLESHEET)
    return Markup(css), csp_hash(css)  # noqa: S704 (our own file, not user data)


def page_headers(style_source: str) -> dict[str, str]:
    policy = [f"style-src {style_source}", "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'"]
    return {
        "Content-Security-Policy": "; ".join(["default-src 'none'", *policy]),
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Robots-Tag": "noindex, nofollow",
    }


def render_page(settings: Settings, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """`pages/<name>.html` as a response; every page also gets `product_name`."""
    css, style_source = stylesheet(settings.templates_dir)
    template = templating.environment(settings.templates_dir).get_template(f"pages/{name}.html")
    html = template.render(context, product_name=settings.product_name, stylesheet=css)
    return HTMLResponse(html, status_code, headers=page_headers(style_source))
