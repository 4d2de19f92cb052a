"""Row locks that serialize decisions about an account with the changes they guard.

A rule such as "only if the target's permissions are a subset of yours" is checked and
acted on in one transaction that holds the target's row, so a role granted at the same
moment cannot slip between the check and the change. Both take the lock with a write
(a no-op UPDATE): PostgreSQL locks the rows, SQLite takes its one write lock, and on
both the reads that follow see everything committed before.
"""

import uuid

from sqlalchemy import Update, update
from sqlmodel import Session, col, select

from auth_service.errors import not_found
from auth_service.models import User


def _touch() -> Update:
    """An UPDATE that changes nothing but takes the lock."""
    same = User.credentials_version
    return update(User).values(credentials_version=same).execution_options(synchronize_session=False)


def lock_user(session: Session, user_id: uuid.UUID) -> User:
    """The user's row, locked until the transaction ends and freshly read; 404 if gone."""
    session.exec(_touch().where(col(User.id) == user_id))
    user = session.exec(select(User).where(col(User.id) == user_id).execution_options(populate_existing=True)).first()
    if user is None:
        session.rollback()
        raise not_found("User")
    return user


def lock_active_superusers(session: Session) -> int:
    """Lock every active superuser's row; returns how many there are. Taken first, before
    any other row, so two transactions that both need it cannot deadlock."""
    result = session.exec(_touch().where(col(User.is_superuser), col(User.is_active)))
    return int(result.rowcount)
