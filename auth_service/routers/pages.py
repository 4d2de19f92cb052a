"""The pages behind the mailed links, for teams without a front end of their own.

A GET only looks at the token (mail scanners open links; they must not spend it) and
shows a button or a form; its POST does the work through the same domain functions as
the JSON API. The token in the form is the proof that the poster read the mail, so there
is nothing for a cross-site request to forge. Errors are pages too, never JSON.
"""

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse

from auth_service import email_flows, one_time_tokens
from auth_service.config import Settings
from auth_service.deps import DbSession, SettingsDep, count_per_ip
from auth_service.errors import AppError, ErrorCode
from auth_service.pages import render_page
from auth_service.password_policy import WeakPassword
from auth_service.schemas import normalize_email

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)

VERIFY = one_time_tokens.VERIFY_EMAIL
RESET = one_time_tokens.PASSWORD_RESET
# Optional, so a missing token or field is our page, not FastAPI's JSON 422.
TokenQuery = Annotated[str | None, Query()]
FormField = Annotated[str | None, Form()]


def link_problem(settings: Settings, purpose: str, exc: AppError) -> HTMLResponse:
    """The page for a link that cannot be used (400): expired, or used, superseded or unknown."""
    if exc.code == ErrorCode.TOKEN_EXPIRED:
        lifetime = (
            timedelta(hours=settings.email_verify_token_hours)
            if purpose == VERIFY
            else timedelta(minutes=settings.password_reset_token_minutes)
        )
        return render_page(settings, "link_expired", 400, purpose=purpose, valid_for=email_flows.in_words(lifetime))
    if exc.code == ErrorCode.INVALID_TOKEN:
        return render_page(settings, "link_invalid", 400, purpose=purpose)
    raise exc


def password_form(
    settings: Settings, token: str, email: str, problems: list[str] | None = None, mismatch: bool = False
) -> HTMLResponse:
    """The new-password form; again with the reasons (422) when the last try was refused."""
    return render_page(
        settings,
        "reset_password",
        422 if problems or mismatch else 200,
        token=token,
        email=email,
        problems=problems or [],
        mismatch=mismatch,
        min_length=settings.password_min_length,
    )


@router.get("/verify-email")
def verify_email_page(db: DbSession, settings: SettingsDep, token: TokenQuery = None) -> HTMLResponse:
    """A button that confirms the address; opening the link spends nothing."""
    try:
        _, user = one_time_tokens.check(db, token or "", VERIFY)
    except AppError as exc:
        return link_problem(settings, VERIFY, exc)
    return render_page(settings, "verify_email", token=token, email=user.email)


@router.post("/verify-email")
def verify_email_submit(db: DbSession, settings: SettingsDep, token: FormField = None) -> HTMLResponse:
    try:
        user = email_flows.verify_email(db, settings, token or "")
    except AppError as exc:
        return link_problem(settings, VERIFY, exc)
    return render_page(settings, "email_verified", email=user.email)


@router.get("/reset-password")
def reset_password_page(db: DbSession, settings: SettingsDep, token: TokenQuery = None) -> HTMLResponse:
    """The new-password form; opening the link spends nothing."""
    try:
        _, user = one_time_tokens.check(db, token or "", RESET)
    except AppError as exc:
        return link_problem(settings, RESET, exc)
    return password_form(settings, token or "", user.email)


@router.post("/reset-password")
def reset_password_submit(
    db: DbSession,
    settings: SettingsDep,
    token: FormField = None,
    new_password: FormField = None,
    confirm_password: FormField = None,
) -> HTMLResponse:
    """Set the password; a refused one shows the form again, the token kept, the password not."""
    token, new_password = token or "", new_password or ""
    try:
        _, user = one_time_tokens.check(db, token, RESET)  # a dead link is the first thing to say
    except AppError as exc:
        return link_problem(settings, RESET, exc)
    email = user.email
    if new_password != (confirm_password or ""):
        return password_form(settings, token, email, mismatch=True)
    try:
        email_flows.reset_password(db, settings, token, new_password)
    except WeakPassword as exc:
        return password_form(settings, token, email, problems=exc.problems)
    except AppError as exc:  # spent or expired in the meantime
        return link_problem(settings, RESET, exc)
    return render_page(settings, "password_changed")


@router.get("/forgot-password")
def forgot_password_page(settings: SettingsDep) -> HTMLResponse:
    """Where the expired and used reset links send people: ask for a new link by address."""
    return render_page(settings, "forgot_password", email="", problem=None)


@router.post("/forgot-password", status_code=202)
def forgot_password_submit(
    request: Request, db: DbSession, settings: SettingsDep, email: FormField = None
) -> HTMLResponse:
    """The same request as POST /auth/password-reset/request, with the same limits and the
    same answer whether or not the address has an account."""
    try:
        address = normalize_email(email or "")
    except ValueError:
        problem = "Enter an email address, like name@example.com."
        return render_page(settings, "forgot_password", 422, email=email or "", problem=problem)
    try:
        count_per_ip(request, "mail", settings.mail_ip_limit)  # the API's budget, shared
        email_flows.request_password_reset(db, settings, address)
        db.commit()
    except AppError as exc:
        if exc.code != ErrorCode.RATE_LIMITED:
            raise
        retry_after = (exc.headers or {}).get("Retry-After", "60")
        problem = f"Too many requests; try again in {retry_after} seconds."
        page = render_page(settings, "forgot_password", 429, email=address, problem=problem)
        page.headers["Retry-After"] = retry_after
        return page
    lifetime = email_flows.in_words(timedelta(minutes=settings.password_reset_token_minutes))
    return render_page(settings, "reset_requested", 202, email=address, valid_for=lifetime)
