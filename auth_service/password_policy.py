"""The password policy of NIST SP 800-63B: length, not a common password, not the email.

The common-password list is Django's (about 20,000 entries, BSD licence, see
`data/common-passwords.LICENSE`), shipped as data so no request ever leaves the host.
"""

import gzip
import string
from functools import lru_cache
from pathlib import Path

from auth_service.config import Settings
from auth_service.errors import AppError, ErrorCode
from auth_service.security import normalize_password

MAX_PASSWORD_LENGTH = 128
COMMON_PASSWORDS_FILE = Path(__file__).parent / "data" / "common-passwords.txt.gz"


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    with gzip.open(COMMON_PASSWORDS_FILE, "rt", encoding="utf-8") as f:
        return frozenset(line.strip().lower() for line in f if line.strip())


def password_problems(settings: Settings, password: str, email: str | None = None) -> list[str]:
    """Every reason the password is refused; empty when it is acceptable."""
    password = normalize_password(password)
    problems = []
    if len(password) < settings.password_min_length:
        problems.append(f"Password must be at least {settings.password_min_length} characters long.")
    if len(password) > MAX_PASSWORD_LENGTH:
        problems.append(f"Password must be at most {MAX_PASSWORD_LENGTH} characters long.")
    # Bytes that were not UTF-8, as a form (U+FFFD) or the environment (lone surrogates)
    # decodes them: not the password that was typed.
    if any(c == "\ufffd" or "\ud800" <= c <= "\udfff" for c in password):
        problems.append("Password could not be read; type it again.")
    lowered = password.lower()
    if lowered in common_passwords():
        problems.append("Password is too common.")
    local_part = email.rpartition("@")[0].lower() if email else ""
    if len(local_part) >= 3 and local_part in lowered:
        problems.append("Password must not contain the email address.")
    if settings.password_require_uppercase and not any(c.isupper() for c in password):
        problems.append("Password must contain an upper-case letter.")
    if settings.password_require_digit and not any(c.isdigit() for c in password):
        problems.append("Password must contain a digit.")
    if settings.password_require_symbol and all(c.isalnum() or c in string.whitespace for c in password):
        problems.append("Password must contain a symbol.")
    return problems


class WeakPassword(AppError):
    """422 WEAK_PASSWORD; `problems` keeps the reasons apart, for a page to list them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(422, ErrorCode.WEAK_PASSWORD, " ".join(problems))
        self.problems = problems


def check_password(settings: Settings, password: str, email: str | None = None) -> None:
    """Raise WeakPassword listing every problem, or return quietly."""
    problems = password_problems(settings, password, email)
    if problems:
        raise WeakPassword(problems)
