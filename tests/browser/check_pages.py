"""The hosted pages and /docs in a real browser, as a person meets them; not part of `make test`.

Needs Debian's Chromium and Python Playwright (never `playwright install`), and a server
started with EMAIL_BACKEND=console (the default) whose log this script reads the mailed
links from, e.g.:

    DATABASE_URL=sqlite:////tmp/run/auth.db PUBLIC_URL=http://127.0.0.1:8011 \
        make run PORT=8011 > /tmp/run/server.log 2>&1 &
    /tmp/swagger-venv/bin/python tests/browser/check_pages.py --base-url http://127.0.0.1:8011 \
        --log /tmp/run/server.log --sqlite /tmp/run/auth.db --shots /tmp/run/shots

Every request not to the server's host is blocked and reported. Screenshots go to --shots;
look at them. With --sqlite (the server's SQLite file) it also expires a link to show that page.
"""

import argparse
import json
import re
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, Route, sync_playwright

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WEAK = "password"
STRONG = "a brand new long password"


def call(base: str, path: str, *, json_body: Any = None, form: dict[str, str] | None = None) -> tuple[int, Any]:
    if json_body is not None:
        data, kind = json.dumps(json_body).encode(), "application/json"
    else:
        data, kind = urllib.parse.urlencode(form or {}).encode(), "application/x-www-form-urlencoded"
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": kind})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (http to our own server)
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def mailed_link(log: Path, email: str, subject: str, after: int) -> str:
    """The link in the newest console mail to `email` with `subject`, logged past byte `after`."""
    pattern = re.compile(rf"mail to {re.escape(email)}: {re.escape(subject)}\n.*?(http\S+token=\S+)", re.S)
    for _ in range(100):
        found = pattern.findall(log.read_text()[after:])
        if found:
            return str(found[-1])
        time.sleep(0.1)
    raise SystemExit(f"no mail {subject!r} to {email} in {log}")


def shot(page: Page, shots: Path, name: str) -> None:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot {path}")


def expect(page: Page, text: str) -> None:
    body = page.inner_text("body")
    if text not in body:
        raise SystemExit(f"expected {text!r} on {page.url}, got:\n{body}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8011")
    parser.add_argument("--log", type=Path, required=True, help="the server's log (console mails)")
    parser.add_argument("--sqlite", type=Path, help="the server's SQLite database, to expire a link")
    parser.add_argument("--shots", type=Path, required=True, help="where the screenshots go")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    base = args.base_url.rstrip("/")
    host = urllib.parse.urlsplit(base).hostname
    args.shots.mkdir(parents=True, exist_ok=True)
    email = f"ada.{int(time.time())}@example.com"
    blocked: list[str] = []
    problems: list[str] = []

    def guard(route: Route) -> None:
        if urllib.parse.urlsplit(route.request.url).hostname == host:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    def complaint(kind: str, text: str) -> None:
        """Console errors, but for the 4xx our error pages answer with and ReDoc's CDN logo, refused by our CSP."""
        expected = re.search(r"status of 4(00|22)\b", text) or ("cdn.redoc.ly" in text and "Content Security" in text)
        if kind == "error" and not expected:
            problems.append(text)

    start = args.log.stat().st_size
    status, _ = call(base, "/auth/signup", json_body={"email": email, "password": "correct horse battery staple"})
    assert status == 201, status
    verify_link = mailed_link(args.log, email, "Confirm your email address", start)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1000, "height": 700})
        context.route("**/*", guard)
        page = context.new_page()
        page.on("console", lambda message: complaint(message.type, message.text))

        page.goto(verify_link)
        expect(page, "Confirm your email address")
        shot(page, args.shots, "01-verify")
        page.get_by_role("button", name="Confirm my email address").click()
        expect(page, "Your email address is confirmed")
        shot(page, args.shots, "02-verified")

        start = args.log.stat().st_size
        assert call(base, "/auth/password-reset/request", json_body={"email": email})[0] == 202
        reset_link = mailed_link(args.log, email, "Reset your password", start)
        page.goto(reset_link)
        expect(page, "Choose a new password")
        page.keyboard.press("Tab")  # the first thing a keyboard reaches: the password field, focus ring visible
        if page.locator('input[name="username"]').is_visible():  # only for password managers
            raise SystemExit("the hidden username field of the reset form is visible")
        if page.evaluate("document.activeElement.id") != "new-password":
            raise SystemExit("Tab does not reach the new-password field first")
        shot(page, args.shots, "03-reset-form")
        page.get_by_label("New password", exact=True).fill(WEAK)
        page.get_by_label("New password, again").fill(WEAK)
        page.get_by_role("button", name="Change my password").click()
        expect(page, "Password is too common.")
        shot(page, args.shots, "04-reset-weak")
        page.emulate_media(color_scheme="dark")
        shot(page, args.shots, "04-reset-weak-dark")
        page.emulate_media(color_scheme="light")
        page.get_by_label("New password", exact=True).fill(STRONG)
        page.get_by_label("New password, again").fill(STRONG)
        page.get_by_role("button", name="Change my password").click()
        expect(page, "Your password has been changed")
        shot(page, args.shots, "05-reset-done")
        status, tokens = call(base, "/auth/login", form={"username": email, "password": STRONG})
        if status != 200:
            raise SystemExit(f"login with the new password: {status} {tokens}")
        print("login with the new password: 200")

        page.goto(reset_link)
        expect(page, "This link cannot be used")
        shot(page, args.shots, "06-used-link")
        page.get_by_role("link", name="send me a new link").click()
        expect(page, "Forgot your password?")
        page.get_by_label("Email address").fill("ada@localhost")  # the browser lets it through; we do not
        page.get_by_role("button", name="Send me a link").click()
        expect(page, "No link was sent")
        shot(page, args.shots, "06-forgot-refused")
        start = args.log.stat().st_size
        page.get_by_label("Email address").fill(email)
        page.get_by_role("button", name="Send me a link").click()
        expect(page, "Check your mail")
        shot(page, args.shots, "06-forgot-sent")
        page.goto(mailed_link(args.log, email, "Reset your password", start))
        expect(page, "Choose a new password")

        if args.sqlite:
            start = args.log.stat().st_size
            assert call(base, "/auth/password-reset/request", json_body={"email": email})[0] == 202
            expired_link = mailed_link(args.log, email, "Reset your password", start)
            with sqlite3.connect(args.sqlite) as db:
                db.execute("UPDATE one_time_token SET expires_at = '2000-01-01 00:00:00' WHERE used_at IS NULL")
            page.goto(expired_link)
            expect(page, "This link has expired")
            shot(page, args.shots, "07-expired-link")

        page.goto(base + "/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=15000)
        page.wait_for_selector(".opblock", timeout=15000)
        shot(page, args.shots, "08-docs")
        page.goto(base + "/redoc")
        page.wait_for_selector("h1", timeout=15000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(args.shots / "09-redoc.png"))  # not full page: it is very long
        print(f"screenshot {args.shots / '09-redoc.png'}")

        phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
        phone.route("**/*", guard)
        mobile = phone.new_page()
        start = args.log.stat().st_size
        assert call(base, "/auth/password-reset/request", json_body={"email": email})[0] == 202
        mobile.goto(mailed_link(args.log, email, "Reset your password", start))
        expect(mobile, "Choose a new password")
        shot(mobile, args.shots, "10-reset-phone")
        mobile.get_by_label("New password", exact=True).fill("ab")
        mobile.get_by_label("New password, again").fill("abc")
        mobile.get_by_role("button", name="Change my password").click()
        expect(mobile, "The two passwords are not the same.")
        shot(mobile, args.shots, "11-reset-phone-mismatch")
        browser.close()

    if blocked:
        print("blocked requests to other hosts:\n  " + "\n  ".join(blocked))
    if problems:
        print("console errors:\n  " + "\n  ".join(problems))
    print("check-pages: " + ("FAIL" if blocked or problems else "OK"))
    return 1 if blocked or problems else 0


if __name__ == "__main__":
    sys.exit(main())
