"""Projects, users, passwords, login and API tokens. A Principal is who is asking, and where.

Roles, checked by each service before it looks anything up (the API, the console and the CLI
call the same services, so they share one rule set):

- viewer: reads everything of the project, chats, and manages what is their own: their chat
  sessions and API tokens. Changes nothing of the project's.
- member: also creates and changes the project's models, datasets, trainings, profiles,
  deploys and third-party entries, cancels jobs, and tests connections and live models (a
  test may restart a server or call out with a stored key).
- admin: also manages users and deployment environments.

Job bodies and the worker act for the job's creator, whose role was checked when the job was
queued; the CLI acts as the project's first admin (it holds the data dir).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import and_, delete, event, or_, select, update
from sqlalchemy.orm import Session

from tuneyard.auth.throttle import throttle
from tuneyard.config import Settings, get_settings
from tuneyard.db import rows_changed
from tuneyard.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from tuneyard.models import ApiToken, Project, User, utcnow
from tuneyard.pagination import paginate
from tuneyard.storage import Layout

ROLES = ("admin", "member", "viewer")
ROLE_RANK = {"viewer": 0, "member": 1, "admin": 2}
DEFAULT_PROJECT_CODE = "1001"
FIRST_ADMIN = "admin"
USERNAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
TOKEN_PREFIX = "ty_"
# A token's last use is written at most this often, so reads stay reads.
TOKEN_USE_INTERVAL = timedelta(minutes=1)
# Revoked and expired API tokens stay listed this long, then go.
ENDED_API_TOKENS_KEPT = timedelta(days=30)

_hasher = PasswordHasher()


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    project_id: str
    project_code: str
    role: str
    # The server's operator (site-wide, whatever the project role): trusted with what runs
    # on the server itself, such as uploaded code.
    operator: bool = False
    # The token the request came with, if any: which, not who, so not part of equality.
    token_id: str | None = field(default=None, compare=False)

    def allows(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def refusal(self, role: str) -> str:
        """Why this principal is refused what needs `role` (for pages that say so up front)."""
        return f"This needs the {role} role; you are {self.role}."

    def require(self, role: str) -> None:
        if not self.allows(role):
            raise Forbidden(self.refusal(role))

    def require_operator(self) -> None:
        if not self.operator:
            raise Forbidden(
                "This needs the server's operator; ask whoever runs the server "
                "(`tuneyard users operator NAME` on its machine)."
            )

    @classmethod
    def of(cls, user: User, token_id: str | None = None) -> Principal:
        return cls(
            user.id,
            user.username,
            user.project_id,
            user.project.code,
            user.role,
            user.operator,
            token_id,
        )


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _hash_password(password: str) -> str:
    with throttle.hashing():
        return _hasher.hash(password)


def _password_matches(password_hash: str, password: str) -> bool:
    with throttle.hashing():
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False


def _check_password_rules(password: str) -> None:
    if len(password) < PASSWORD_MIN:
        raise Invalid(f"A password needs at least {PASSWORD_MIN} characters.")
    if len(password) > PASSWORD_MAX:
        raise Invalid(f"A password is at most {PASSWORD_MAX:,} characters.")


def get_project_by_code(session: Session, code: str) -> Project:
    project = session.scalar(select(Project).where(Project.code == code))
    if project is None:
        raise NotFound(f"No project with code '{code}'.")
    return project


def create_project(
    session: Session, code: str, admin_username: str, admin_password: str, name: str | None = None
) -> User:
    """A new project with its first admin, who adds everyone else; returns that admin.

    Only whoever holds the data dir makes projects (the first start, tests): no API does.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", code):
        raise Invalid("A project code is 1-32 letters, digits, '-' or '_'.")
    if session.scalar(select(Project).where(Project.code == code)):
        raise Conflict(f"A project with code '{code}' already exists.")
    project = Project(code=code, name=name or f"Project {code}")
    session.add(project)
    session.flush()
    return _add_user(session, project, admin_username, admin_password, "admin")


def create_user(
    session: Session, principal: Principal, username: str, password: str, role: str = "member"
) -> User:
    """A user in the admin's own project."""
    principal.require("admin")
    project = session.get_one(Project, principal.project_id)
    return _add_user(session, project, username, password, role)


def _add_user(session: Session, project: Project, username: str, password: str, role: str) -> User:
    if not USERNAME_RE.fullmatch(username):
        raise Invalid("A username is 1-64 letters, digits, '.', '_' or '-'.")
    if role not in ROLES:
        raise Invalid(f"Unknown role '{role}'; choose one of: {', '.join(ROLES)}.")
    _check_password_rules(password)
    exists = session.scalar(
        select(User).where(User.project_id == project.id, User.username == username)
    )
    if exists:
        raise Conflict(f"User '{username}' already exists in project {project.code}.")
    user = User(
        project_id=project.id, username=username, password_hash=_hash_password(password), role=role
    )
    session.add(user)
    session.flush()
    session.refresh(user)
    return user


def list_users(session: Session, principal: Principal, limit: int = 50, offset: int = 0):
    stmt = select(User).where(User.project_id == principal.project_id).order_by(User.username)
    return paginate(session, stmt, limit, offset)


def get_user(session: Session, principal: Principal, username: str) -> User:
    user = session.scalar(
        select(User).where(User.project_id == principal.project_id, User.username == username)
    )
    if user is None:
        raise NotFound(f"No user '{username}' in project {principal.project_code}.")
    return user


def delete_user(session: Session, principal: Principal, username: str) -> None:
    principal.require("admin")
    user = get_user(session, principal, username)
    if user.id == principal.user_id:
        raise Conflict("You cannot delete yourself; ask another admin.")
    if user.role == "admin":
        admins = session.scalars(
            select(User).where(User.project_id == user.project_id, User.role == "admin")
        ).all()
        if len(admins) <= 1:
            raise Conflict("This is the project's last admin; make another admin first.")
    session.delete(user)


def login(
    session: Session, project_code: str, username: str, password: str, address: str = "unknown"
) -> tuple[str, Principal]:
    """Check a password; return a new session token and who it is. One message for every
    failure; too many failures for the user or from the address are refused for a while."""
    throttle.check(project_code, username, address)
    user = session.scalar(
        select(User)
        .join(Project, User.project_id == Project.id)
        .where(Project.code == project_code, User.username == username)
    )
    if user is None:
        _hash_password(password)  # spend the same time as a real check
        matches = False
    else:
        matches = _password_matches(user.password_hash, password)
    if user is None or not matches:
        throttle.failed(project_code, username, address)
        raise Unauthorized("Wrong project code, username or password.")
    throttle.succeeded(project_code, username)
    remove_ended_tokens(session)
    settings = get_settings()
    token, row = _issue_token(
        session, user, "login", "session", utcnow() + timedelta(hours=settings.token_ttl_hours)
    )
    return token, Principal.of(user, row.id)


def remove_ended_tokens(session: Session) -> int:
    """Delete session tokens that expired or were revoked (signed out, password changed), and
    API tokens that ended over ENDED_API_TOKENS_KEPT ago. Returns how many went."""
    now = utcnow()
    long_ago = now - ENDED_API_TOKENS_KEPT
    return rows_changed(
        session,
        delete(ApiToken)
        .where(
            or_(
                and_(
                    ApiToken.kind == "session",
                    or_(ApiToken.revoked_at.is_not(None), ApiToken.expires_at < now),
                ),
                ApiToken.revoked_at < long_ago,
                ApiToken.expires_at < long_ago,
            )
        )
        .execution_options(synchronize_session=False),
    )


# -- passwords ---------------------------------------------------------------------------


def change_password(
    session: Session,
    principal: Principal,
    current_password: str,
    new_password: str,
    address: str = "unknown",
) -> None:
    """Change your own password, given the current one. Your other sessions end; your API
    tokens keep working. Wrong current passwords count as failed logins."""
    throttle.check(principal.project_code, principal.username, address)
    user = session.get(User, principal.user_id)
    if user is None:
        raise Unauthorized("Your user no longer exists; ask an admin of the project.")
    if not _password_matches(user.password_hash, current_password):
        throttle.failed(principal.project_code, principal.username, address)
        raise Forbidden("The current password is wrong; type the one you log in with.")
    _check_password_rules(new_password)
    if new_password == current_password:
        raise Invalid("The new password is the same as the current one; choose another.")
    _set_password(session, user, new_password, keep_token_id=principal.token_id)


def reset_password(
    session: Session, principal: Principal, username: str, new_password: str
) -> None:
    """An admin sets a user's password without the old one; that user's sessions end (but
    the admin's own current one, when it is their own password)."""
    principal.require("admin")
    user = get_user(session, principal, username)
    _check_password_rules(new_password)
    keep = principal.token_id if user.id == principal.user_id else None
    _set_password(session, user, new_password, keep_token_id=keep)


def _set_password(session: Session, user: User, password: str, keep_token_id: str | None):
    user.password_hash = _hash_password(password)
    ended = update(ApiToken).where(
        ApiToken.user_id == user.id, ApiToken.kind == "session", ApiToken.revoked_at.is_(None)
    )
    if keep_token_id is not None:
        ended = ended.where(ApiToken.id != keep_token_id)
    session.execute(ended.values(revoked_at=utcnow()).execution_options(synchronize_session=False))
    if user.username == FIRST_ADMIN and user.project.code == DEFAULT_PROJECT_CODE:
        # The first start's password file would now be wrong; it goes once the change is in.
        path = Layout().admin_password_file
        event.listen(
            session, "after_commit", lambda _session: path.unlink(missing_ok=True), once=True
        )


def _issue_token(session: Session, user: User, name: str, kind: str, expires_at=None):
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user.id,
        name=name,
        kind=kind,
        token_hash=_hash_token(token),
        prefix=token[:10],
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return token, row


def create_token(session: Session, principal: Principal, name: str, days: int | None = None):
    """An API token for scripts and the CLI; the secret is shown once. Any role makes its own:
    a token acts as its user, with that user's role."""
    if not name or len(name) > 100:
        raise Invalid("Give the token a name of 1-100 characters.")
    if days is not None and days < 1:
        raise Invalid("A token's lifetime is at least 1 day; leave it out for no expiry.")
    user = session.get_one(User, principal.user_id)
    expires = utcnow() + timedelta(days=days) if days else None
    return _issue_token(session, user, name, "api", expires)


def list_tokens(session: Session, principal: Principal, limit: int = 50, offset: int = 0):
    stmt = (
        select(ApiToken)
        .where(ApiToken.user_id == principal.user_id, ApiToken.kind == "api")
        .order_by(ApiToken.created_at.desc())
    )
    return paginate(session, stmt, limit, offset)


def revoke_token(session: Session, principal: Principal, token_id: str) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != principal.user_id:
        raise NotFound(f"No token '{token_id}'. List yours with `tuneyard tokens list`.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def logout(session: Session, token: str) -> None:
    """Revoke a session token (signing out); an unknown token is already signed out."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _hash_token(token)))
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()


def authenticate(session: Session, token: str) -> Principal:
    """Who holds `token`. Its use is recorded at most once a TOKEN_USE_INTERVAL: run this in a
    short unit of work of its own, never in one that goes on to slow work."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _hash_token(token)))
    now = utcnow()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("Invalid or revoked token; log in again or create a new token.")
    if row.expires_at is not None and row.expires_at < now:
        raise Unauthorized("This token has expired; log in again.")
    if row.last_used_at is None or row.last_used_at <= now - TOKEN_USE_INTERVAL:
        row.last_used_at = now
    return Principal.of(row.user, row.id)


def ensure_bootstrap(session: Session, settings: Settings | None = None) -> str | None:
    """First start: create project 1001 and user admin with a random password.

    The password is written to <data dir>/admin-password.txt (mode 0600) and returned so the
    caller can print it once; later starts return None. Changing that password removes the
    file.
    """
    settings = settings or get_settings()
    if session.scalar(select(Project).limit(1)) is not None:
        return None
    password = secrets.token_urlsafe(12)
    admin = create_project(session, DEFAULT_PROJECT_CODE, FIRST_ADMIN, password, "Default project")
    admin.operator = True  # whoever started the server is its operator
    layout = Layout(settings)
    layout.ensure_root()
    path = layout.admin_password_file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    os.chmod(path, 0o600)
    return password


def local_principal(session: Session, project_code: str | None = None) -> Principal:
    """The CLI's identity: the project's first admin, with the operator's trust (whoever runs
    the CLI has the server's data dir and database, so full trust)."""
    project = get_project_by_code(session, project_code or DEFAULT_PROJECT_CODE)
    user = session.scalar(
        select(User)
        .where(User.project_id == project.id, User.role == "admin")
        .order_by(User.created_at)
        .limit(1)
    )
    if user is None:
        raise NotFound(f"Project {project.code} has no admin user.")
    return dataclasses.replace(Principal.of(user), operator=True)


def set_operator(session: Session, principal: Principal, username: str, operator: bool) -> User:
    """Make a user of the principal's project the server's operator, or stop them being one.
    Only an admin who is an operator does (in practice the CLI, on the server's machine)."""
    principal.require("admin")
    principal.require_operator()
    user = get_user(session, principal, username)
    user.operator = operator
    session.flush()
    return user
