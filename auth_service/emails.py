"""Mail: the messages we send, and the backends that send them (console, smtp).

Nothing here sends during a request: `queue_mail` writes the message to the outbox in
the caller's transaction, and `outbox.py` delivers it after commit, retrying on failure.
"""

import html
import logging
import smtplib
import ssl
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from sqlmodel import Session

from auth_service.config import Settings
from auth_service.models import OutboxMessage

logger = logging.getLogger(__name__)

MAIL = "email"


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str
    html: str


def _render(to: str, subject: str, intro: str, link: str, token: str, validity: str) -> Mail:
    text = (
        f"{intro}\n\n{link}\n\nThe link works once and expires in {validity}.\n"
        f"If your application asks for a code, use: {token}\n\n"
        "If you did not ask for this, you can ignore this message.\n"
    )
    body = (
        f"<p>{html.escape(intro)}</p>"
        f'<p><a href="{html.escape(link)}">{html.escape(link)}</a></p>'
        f"<p>The link works once and expires in {validity}.</p>"
        "<p>If you did not ask for this, you can ignore this message.</p>"
    )
    return Mail(to=to, subject=subject, text=text, html=body)


def verification_mail(settings: Settings, to: str, token: str) -> Mail:
    link = settings.verify_email_url.format(public_url=settings.public_url.rstrip("/"), token=token)
    validity = f"{settings.email_verify_token_hours} hours"
    return _render(
        to, "Confirm your email address", "Confirm your email address by opening this link:", link, token, validity
    )


def password_reset_mail(settings: Settings, to: str, token: str) -> Mail:
    link = settings.password_reset_url.format(public_url=settings.public_url.rstrip("/"), token=token)
    validity = f"{settings.password_reset_token_minutes} minutes"
    intro = "Choose a new password by opening this link:"
    return _render(to, "Reset your password", intro, link, token, validity)


def email_changed_mail(old: str, new: str) -> Mail:
    """To the old address: if this was not its owner, they learn at once (no link, no token)."""
    text = (
        f"The email address of your account was changed to {new}.\n\n"
        "If you did not do this, contact your administrator right away: someone else may be "
        "using your account.\n"
    )
    body = f"<p>{html.escape(text.splitlines()[0])}</p><p>{html.escape(text.splitlines()[2])}</p>"
    return Mail(to=old, subject="Your email address was changed", text=text, html=body)


def queue_mail(session: Session, mail: Mail) -> None:
    """Add the mail to the outbox; it goes out only if the caller's transaction commits."""
    session.add(OutboxMessage(kind=MAIL, payload=asdict(mail)))


def mail_from_payload(payload: dict[str, Any]) -> Mail:
    return Mail(to=payload["to"], subject=payload["subject"], text=payload["text"], html=payload["html"])


def send_mail(settings: Settings, mail: Mail) -> None:
    """Deliver now through the configured backend; raises on failure (the outbox retries)."""
    if settings.email_backend == "console":
        # Development only: the message, link included, goes to the log.
        logger.info("mail to %s: %s\n%s", mail.to, mail.subject, mail.text)
        return
    message = EmailMessage()
    message["From"] = settings.email_from
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Message-ID"] = make_msgid(domain=settings.email_from.rpartition("@")[2].strip("> ") or None)
    message.set_content(mail.text)
    message.add_alternative(mail.html, subtype="html")
    if not settings.smtp_host:
        raise RuntimeError("EMAIL_BACKEND=smtp but SMTP_HOST is not set")
    smtp_class = smtplib.SMTP_SSL if settings.smtp_ssl else smtplib.SMTP
    context = ssl.create_default_context()
    kwargs: dict[str, Any] = {"timeout": settings.smtp_timeout}
    if settings.smtp_ssl:
        kwargs["context"] = context
    with smtp_class(settings.smtp_host, settings.smtp_port, **kwargs) as smtp:
        if settings.smtp_starttls and not settings.smtp_ssl:
            smtp.starttls(context=context)
        if settings.smtp_username and settings.smtp_password:
            smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
        smtp.send_message(message)
