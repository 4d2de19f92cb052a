"""Mail: the messages we send (Jinja2 templates, see templating.py), and the backends
that send them (console, smtp).

Nothing here sends during a request: `queue_mail` writes the message to the outbox in
the caller's transaction, and `outbox.py` delivers it after commit, retrying on failure.
"""

import logging
import smtplib
import ssl
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from sqlmodel import Session

from auth_service import templating
from auth_service.config import Settings
from auth_service.models import OutboxMessage

logger = logging.getLogger(__name__)

MAIL = "email"
SUBJECT = "Subject:"


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str
    html: str


def render_mail(settings: Settings, name: str, to: str, /, **context: Any) -> Mail:
    """Render the template pair `mail/<name>.txt` and `mail/<name>.html` into a Mail.

    The text template starts with a `Subject:` line and a blank line. Both templates get
    `product_name`, `public_url` and `to` beside `context`; the HTML one also `subject`.
    Adding a mail is two template files and one call.
    """
    env = templating.environment(settings.templates_dir)
    values = {"product_name": settings.product_name, "public_url": settings.public_url.rstrip("/"), "to": to}
    values.update(context)
    head, _, text = env.get_template(f"mail/{name}.txt").render(values).partition("\n")
    if not head.startswith(SUBJECT):
        raise ValueError(f"mail/{name}.txt must start with a '{SUBJECT}' line")
    subject = " ".join(head.removeprefix(SUBJECT).split())  # one line, whatever the data held
    html = env.get_template(f"mail/{name}.html").render(values, subject=subject)
    return Mail(to=to, subject=subject, text=text.lstrip("\n"), html=html)


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
