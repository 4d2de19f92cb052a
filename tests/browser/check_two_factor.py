"""Two-factor authentication in Swagger UI, in a real browser; not part of `make test`.

A person with no authenticator at hand: signs up, Authorizes in /docs with the password,
starts enrolment with "Try it out", reads the secret off the response, confirms with a
code (computed here from that secret, as an app would), then logs out of the Authorize
dialog and Authorizes again with the 6-digit code in client_secret, and calls
GET /users/me. Every request not to the server is blocked. Needs Debian's Chromium and
Python Playwright (never `playwright install`):

    make run PORT=8012 &
    /tmp/swagger-venv/bin/python tests/browser/check_two_factor.py --base-url http://127.0.0.1:8012 \
        --shots /tmp/run/2fa-shots

Prints `check-two-factor: OK` at the end; look at the screenshots.
"""

import argparse
import base64
import hashlib
import hmac
import json
import struct
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, Route, sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
PASSWORD = "correct horse battery staple"


def totp(secret: str, at: float) -> str:
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    digest = hmac.new(key, struct.pack(">Q", int(at // 30)), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    return f"{(struct.unpack('>I', digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000:06d}"


def signup(base: str, email: str) -> None:
    body = json.dumps({"email": email, "password": PASSWORD}).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(f"{base}/auth/signup", data=body, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (our own server)
        assert answer.status == 201


def operation(page: Page, method: str, path: str) -> Locator:
    found = page.locator(f".opblock.opblock-{method}:has(.opblock-summary-path[data-path='{path}'])").first
    found.scroll_into_view_if_needed()
    if "is-open" not in (found.get_attribute("class") or ""):
        found.locator(".opblock-summary").first.click()
    return found


def try_it(op: Locator, body: dict[str, Any] | None = None) -> tuple[int, str]:
    """Try it out, with a JSON body, Execute: the status and the response body shown."""
    if op.locator("button.try-out__btn", has_text="Try it out").count():
        op.locator("button.try-out__btn", has_text="Try it out").first.click()
    if body is not None:
        op.locator("textarea.body-param__text").first.fill(json.dumps(body))
    op.locator("button.execute").first.click()
    return read_response(op)


def read_response(op: Locator) -> tuple[int, str]:
    status = op.locator(".live-responses-table tbody tr.response td.response-col_status").first
    status.wait_for(state="visible", timeout=15000)
    text = op.locator(".live-responses-table .response-col_description pre").first.inner_text()
    return int(status.inner_text().strip()[:3]), text


def authorize(page: Page, email: str, password: str, client_secret: str | None = None) -> None:
    page.locator(".auth-wrapper button.authorize").first.click()
    box = page.locator(".dialog-ux .modal-ux .auth-container").filter(has=page.locator("h4", has_text="OAuth2"))
    box = box.first
    if box.locator("button.authorize", has_text="Logout").count():
        box.locator("button.authorize", has_text="Logout").first.click()
    box.locator("#oauth_username").fill(email)
    box.locator("#oauth_password").fill(password)
    if client_secret is not None:
        box.locator("input[data-name='clientSecret']").fill(client_secret)
    box.locator("button.authorize", has_text="Authorize").first.click()
    box.locator("button.authorize", has_text="Logout").first.wait_for(state="visible", timeout=15000)


def close_dialog(page: Page) -> None:
    page.locator(".dialog-ux .modal-ux button.btn-done").first.click()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--shots", type=Path, required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    base = args.base_url.rstrip("/")
    args.shots.mkdir(parents=True, exist_ok=True)
    email = f"ada.{uuid.uuid4().hex[:8]}@example.com"
    signup(base, email)
    blocked: list[str] = []

    def only_ours(route: Route) -> None:
        if route.request.url.startswith(base):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 1100}).new_page()
        page.route("**/*", only_ours)
        page.goto(f"{base}/docs")
        page.locator(".auth-wrapper button.authorize").first.wait_for(timeout=20000)

        authorize(page, email, PASSWORD)
        page.screenshot(path=args.shots / "01-authorized-with-password.png")
        close_dialog(page)

        enrol = operation(page, "post", "/users/me/mfa/totp")
        media_type = enrol.locator(".response-controls select, .responses-inner select").first
        media_type.select_option("image/png")  # Swagger shows an image answer as an image
        try_it(enrol, {"current_password": PASSWORD})
        qr = enrol.locator(".live-responses-table img").first
        qr.wait_for(state="visible", timeout=15000)
        assert qr.evaluate("img => img.complete && img.naturalWidth > 0"), "the QR code did not render"
        enrol.locator(".live-responses-table").first.screenshot(path=args.shots / "02-enrolment-qr-code.png")
        media_type.select_option("application/json")  # again, for the secret to type (it replaces the first)
        enrol.locator("button.execute").first.click()
        page.wait_for_timeout(1500)
        status, text = read_response(enrol)
        assert status == 200, (status, text)
        secret = json.loads(text)["secret"]
        enrol.screenshot(path=args.shots / "02-enrolment-secret.png")

        confirm = operation(page, "post", "/users/me/mfa/totp/confirm")
        status, text = try_it(confirm, {"code": totp(secret, time.time())})
        assert status == 200 and len(json.loads(text)["recovery_codes"]) == 10, (status, text)
        confirm.screenshot(path=args.shots / "03-recovery-codes.png")

        # Log out of the dialog, and in again with the code: the next step's (this one's was used).
        page.locator(".auth-wrapper button.authorize").first.click()
        page.locator(".dialog-ux .modal-ux button.authorize", has_text="Logout").first.click()
        close_dialog(page)
        code = totp(secret, time.time() + 30)
        page.locator(".auth-wrapper button.authorize").first.click()
        page.locator("#oauth_username").fill(email)
        page.locator("#oauth_password").fill(PASSWORD)
        page.locator("input[data-name='clientSecret']").fill(code)
        page.screenshot(path=args.shots / "04-authorize-with-code.png")
        page.locator(".dialog-ux .modal-ux button.authorize", has_text="Authorize").first.click()
        page.locator(".dialog-ux .modal-ux button.authorize", has_text="Logout").first.wait_for(timeout=15000)
        page.screenshot(path=args.shots / "05-authorized-with-code.png")
        close_dialog(page)

        me = operation(page, "get", "/users/me")
        status, text = try_it(me)
        assert status == 200 and json.loads(text)["mfa_enabled"] is True, (status, text)
        me.screenshot(path=args.shots / "06-users-me.png")
        browser.close()
    if blocked:
        print(f"check-two-factor: FAIL requests left the machine: {blocked[:3]}")
        return 1
    print(f"check-two-factor: OK ({email}); screenshots in {args.shots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
