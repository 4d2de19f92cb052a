"""Mail templates: every package template renders with hostile data, escaped in HTML and
verbatim in text; TEMPLATES_DIR overrides a file and the rest fall back; PRODUCT_NAME shows."""

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jinja2 import meta

from auth_service import templating
from auth_service.config import Settings
from auth_service.email_flows import in_words
from auth_service.emails import render_mail
from tests.conftest import PASSWORD, TEST_SECRET, queued_mails, signup

MAIL_DIR = templating.PACKAGE_TEMPLATES / "mail"
PACKAGE_MAILS = sorted(path.stem for path in MAIL_DIR.glob("*.txt"))
HOSTILE = "<script>alert('x')</script> \"quoted\" {{ 7 * 7 }} {% raw %} \u202egnp.exe\u202c & </p>"


def package_settings(**overrides: Any) -> Settings:
    """Settings without TEMPLATES_DIR (this module's fixture sets one for the HTTP test)."""
    return Settings(environment="test", secret_key=TEST_SECRET, _env_file=None, **overrides)


def variables(name: str) -> set[str]:
    """Every variable the template pair (and what it extends or includes) reads."""
    env = templating.environment(None)
    found: set[str] = set()
    for path in [MAIL_DIR / f"{name}.txt", MAIL_DIR / f"{name}.html", *MAIL_DIR.glob("_*.html")]:
        found |= meta.find_undeclared_variables(env.parse(path.read_text()))
    return found


def test_the_package_ships_the_mails_in_pairs() -> None:
    assert {"verify_email", "password_reset", "email_changed"} <= set(PACKAGE_MAILS)
    for name in PACKAGE_MAILS:
        assert (MAIL_DIR / f"{name}.html").is_file(), name


@pytest.mark.parametrize("name", PACKAGE_MAILS)
def test_every_mail_renders_hostile_data_escaped_in_html_and_verbatim_in_text(name: str) -> None:
    settings = package_settings()
    context = dict.fromkeys(variables(name) - {"product_name", "public_url", "to", "subject"}, HOSTILE)
    mail = render_mail(settings, name, "<script>@example.com", **context)
    assert mail.to == "<script>@example.com" and mail.subject and "\n" not in mail.subject
    assert "<script>" not in mail.html and "&lt;script&gt;" in mail.html
    assert "&#34;quoted&#34;" in mail.html and "&lt;/p&gt;" in mail.html
    assert "{{ 7 * 7 }}" in mail.html and "49" not in mail.html  # data is never evaluated as a template
    assert "<script>alert('x')</script>" in mail.text  # plain text is not HTML-escaped
    assert "&lt;" not in mail.text and "&amp;" not in mail.text
    for part in (mail.subject, mail.text, mail.html):
        assert "\u202e" not in part and "\u202c" not in part  # no bidi override survives
    assert mail.html.lstrip().startswith("<!doctype html>") and '<html lang="en">' in mail.html


def test_a_mail_template_must_start_with_a_subject(tmp_path: Path) -> None:
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "email_changed.txt").write_text("Hello\n")
    with pytest.raises(ValueError, match="Subject:"):  # at start-up
        package_settings(templates_dir=tmp_path)
    settings = package_settings()
    settings.templates_dir = tmp_path  # and, should it get past that, at rendering
    with pytest.raises(ValueError, match="Subject:"):
        render_mail(settings, "email_changed", "ada@example.com", full_name=None, new_email="new@example.com")


def test_lifetimes_in_words() -> None:
    assert in_words(timedelta(hours=24)) == "24 hours"
    assert in_words(timedelta(minutes=60)) == "1 hour"
    assert in_words(timedelta(minutes=90)) == "90 minutes"
    assert in_words(timedelta(minutes=1)) == "1 minute"


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, Any]:
    """An override for the text of the verification mail only; its HTML stays the package's."""
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "verify_email.txt").write_text(
        "Subject: Welcome to {{ product_name }}\n\nHi {{ full_name }}, confirm here: {{ link }}\n"
    )
    return {"templates_dir": tmp_path, "product_name": "Acme <Login>", "public_url": "https://login.acme.test"}


def test_templates_dir_overrides_one_file_and_the_rest_fall_back(client: TestClient, app: FastAPI) -> None:
    signup(client, "ada@example.com", PASSWORD, full_name="Ada <Lovelace>")
    [mail] = queued_mails(app, "ada@example.com")
    assert set(mail) == {"to", "subject", "text", "html"}  # the outbox payload keeps its shape
    assert mail["subject"] == "Welcome to Acme <Login>"
    assert mail["text"].startswith("Hi Ada <Lovelace>, confirm here: https://login.acme.test/verify-email?token=")
    # the HTML part is still the package's, with the product name and the user's name escaped
    assert "Confirm my email address" in mail["html"]
    assert "Acme &lt;Login&gt;" in mail["html"] and "Ada &lt;Lovelace&gt;" in mail["html"]
    assert "<Login>" not in mail["html"]


def test_an_override_that_cannot_render_stops_the_start_not_a_mail(tmp_path: Path) -> None:
    """A misspelt variable would have failed at send time, and the signup sending it with a 500."""
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "verify_email.txt").write_text("Subject: Hi\n\nHello {{ full_nmae }}: {{ link }}\n")
    with pytest.raises(ValueError, match=r"mail/verify_email.txt: 'full_nmae' is undefined"):
        package_settings(templates_dir=tmp_path)
    (tmp_path / "mail" / "verify_email.txt").write_text("Subject: Hi\n\nHello {{ full_name }: {{ link }}\n")
    with pytest.raises(ValueError, match=r"mail/verify_email\.txt"):
        package_settings(templates_dir=tmp_path)  # a syntax error too
    (tmp_path / "mail" / "verify_email.txt").write_text("Subject: Hi\n\nHello {{ full_name }}: {{ link }}\n")
    assert package_settings(templates_dir=tmp_path).templates_dir == tmp_path
