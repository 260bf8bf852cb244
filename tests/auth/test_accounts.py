"""Accounts: changing and resetting passwords, login throttling, token use and cleanup, and
a private data dir."""

from __future__ import annotations

import os
import stat
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from tests.helpers import login
from tuneyard.auth.service import _hash_token
from tuneyard.db import session_scope
from tuneyard.models import ApiToken, utcnow

PASSWORD = "/api/v1/auth/password"
LOGIN = "/api/v1/auth/login"


def add_user(client, auth, username: str, password: str, role: str = "member") -> None:
    response = client.post(
        "/api/v1/users",
        json={"username": username, "password": password, "role": role},
        headers=auth,
    )
    assert response.status_code == 201, response.text


def try_login(client, password: str, username: str = "admin"):
    return client.post(
        LOGIN, json={"project_code": "1001", "username": username, "password": password}
    )


def me(client, headers) -> int:
    return client.get("/api/v1/auth/me", headers=headers).status_code


class TestChangePassword:
    def test_new_password_works_and_other_sessions_end(self, client, admin_password):
        here = login(client, admin_password)
        elsewhere = login(client, admin_password)
        created = client.post("/api/v1/tokens", json={"name": "script"}, headers=here).json()
        script = {"Authorization": f"Bearer {created['token']}"}

        response = client.post(
            PASSWORD,
            json={"current_password": admin_password, "new_password": "a-new-password"},
            headers=here,
        )
        assert response.status_code == 204, response.text
        assert me(client, here) == 200  # the session that changed it goes on
        assert me(client, elsewhere) == 401  # every other session ended
        assert me(client, script) == 200  # API tokens keep working
        assert try_login(client, admin_password).status_code == 401
        login(client, "a-new-password")

    def test_the_first_admins_password_file_goes(self, client, admin_password, data_dir):
        headers = login(client, admin_password)
        client.post(
            PASSWORD,
            json={"current_password": admin_password, "new_password": "a-new-password"},
            headers=headers,
        )
        assert not (data_dir / "admin-password.txt").exists()

    def test_wrong_current_password_changes_nothing(self, client, admin_password, data_dir):
        headers = login(client, admin_password)
        response = client.post(
            PASSWORD,
            json={"current_password": "not-it-at-all", "new_password": "a-new-password"},
            headers=headers,
        )
        assert response.status_code == 403
        assert response.json()["detail"] == (
            "The current password is wrong; type the one you log in with."
        )
        assert (data_dir / "admin-password.txt").read_text().strip() == admin_password
        login(client, admin_password)

    @pytest.mark.parametrize(
        "new,needle",
        [("short", "at least 8 characters"), ("SAME", "same as the current one")],
    )
    def test_bad_new_password(self, client, admin_password, new, needle):
        headers = login(client, admin_password)
        new = admin_password if new == "SAME" else new
        response = client.post(
            PASSWORD,
            json={"current_password": admin_password, "new_password": new},
            headers=headers,
        )
        assert response.status_code == 422
        assert needle in response.json()["detail"]
        login(client, admin_password)

    def test_guessing_the_current_password_is_throttled(self, client, admin_password):
        headers = login(client, admin_password)
        for _ in range(5):
            client.post(
                PASSWORD,
                json={"current_password": "a-guess-123", "new_password": "a-new-password"},
                headers=headers,
            )
        response = client.post(
            PASSWORD,
            json={"current_password": admin_password, "new_password": "a-new-password"},
            headers=headers,
        )
        assert response.status_code == 429
        assert "Too many wrong passwords for user 'admin'" in response.json()["detail"]


class TestResetPassword:
    def test_admin_resets_a_members_password(self, client, auth):
        add_user(client, auth, "ana", "ana-password")
        ana = login(client, "ana-password", "ana")
        response = client.post(
            "/api/v1/users/ana/password", json={"new_password": "fresh-password"}, headers=auth
        )
        assert response.status_code == 204, response.text
        assert me(client, ana) == 401
        assert try_login(client, "ana-password", "ana").status_code == 401
        login(client, "fresh-password", "ana")

    def test_members_cannot_reset_passwords(self, client, auth, admin_password):
        add_user(client, auth, "ana", "ana-password")
        ana = login(client, "ana-password", "ana")
        response = client.post(
            "/api/v1/users/admin/password", json={"new_password": "taken-over"}, headers=ana
        )
        assert response.status_code == 403
        assert "needs the admin role" in response.json()["detail"]
        login(client, admin_password)

    def test_unknown_user(self, client, auth):
        response = client.post(
            "/api/v1/users/nobody/password", json={"new_password": "whatever1"}, headers=auth
        )
        assert response.status_code == 404
        assert response.json()["detail"] == "No user 'nobody' in project 1001."

    def test_cli_sets_the_first_admins_password(self, client, admin_password, data_dir):
        from tuneyard.cli import app

        result = CliRunner().invoke(
            app, ["users", "recover", "admin"], env={"TUNEYARD_NEW_PASSWORD": "from-the-cli"}
        )
        assert result.exit_code == 0, result.output
        assert "Changed the password of admin" in result.output
        assert not (data_dir / "admin-password.txt").exists()
        assert try_login(client, admin_password).status_code == 401
        login(client, "from-the-cli")


class TestLoginThrottle:
    def test_a_user_is_locked_for_a_while_after_five_wrong_passwords(
        self, client, auth, admin_password
    ):
        add_user(client, auth, "ana", "ana-password")
        for _ in range(5):
            assert try_login(client, "wrong-password").status_code == 401
        refused = try_login(client, admin_password)
        assert refused.status_code == 429
        detail = refused.json()["detail"]
        assert detail.startswith("Too many wrong passwords for user 'admin' in project 1001;")
        seconds = int(refused.headers["retry-after"])
        assert 0 < seconds <= 300
        assert f"try again in {seconds} seconds" in detail
        login(client, "ana-password", "ana")  # another user is not held up

    def test_a_success_clears_the_users_count(self, client, admin_password):
        for _ in range(4):
            try_login(client, "wrong-password")
        login(client, admin_password)
        for _ in range(4):
            assert try_login(client, "wrong-password").status_code == 401
        login(client, admin_password)
        for _ in range(5):
            assert try_login(client, "wrong-password").status_code == 401
        assert try_login(client, admin_password).status_code == 429

    def test_an_address_is_locked_after_twenty_failures(self, client, auth):
        add_user(client, auth, "ana", "ana-password")
        for number in range(20):
            assert try_login(client, "guess", f"nobody{number}").status_code == 401
        refused = try_login(client, "ana-password", "ana")
        assert refused.status_code == 429
        assert refused.json()["detail"].startswith("Too many failed logins from your address;")
        assert int(refused.headers["retry-after"]) > 0

    def test_password_checks_at_once_are_bounded(self, client, admin_password, monkeypatch):
        from tuneyard.auth import throttle as throttling

        monkeypatch.setattr(throttling, "HASHING_WAIT_SECONDS", 0.2)
        slots = throttling.throttle._hashing
        taken = 0
        while slots.acquire(blocking=False):  # every slot busy with other logins
            taken += 1
        try:
            refused = try_login(client, admin_password)
        finally:
            for _ in range(taken):
                slots.release()
        assert taken == throttling.HASHING_AT_ONCE
        assert refused.status_code == 429
        assert "checking many passwords at once" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "5"
        login(client, admin_password)


def token_row(token_id: str) -> ApiToken | None:
    with session_scope() as session:
        return session.get(ApiToken, token_id)


class TestTokens:
    def test_use_is_recorded_at_most_once_a_minute(self, client, auth):
        created = client.post("/api/v1/tokens", json={"name": "ci"}, headers=auth).json()
        bearer = {"Authorization": f"Bearer {created['token']}"}
        me(client, bearer)
        first = token_row(created["id"]).last_used_at
        assert first is not None
        me(client, bearer)
        assert token_row(created["id"]).last_used_at == first

        with session_scope() as session:
            session.get(ApiToken, created["id"]).last_used_at = first - timedelta(minutes=2)
        me(client, bearer)
        assert token_row(created["id"]).last_used_at > first

    def test_login_removes_ended_session_tokens(self, client, auth, admin_password):
        signed_out = login(client, admin_password)
        assert client.get("/api/v1/auth/me", headers=signed_out).status_code == 200
        expired = login(client, admin_password)
        recently = client.post("/api/v1/tokens", json={"name": "recent"}, headers=auth).json()
        long_ago = client.post("/api/v1/tokens", json={"name": "old"}, headers=auth).json()
        with session_scope() as session:
            sessions = {row.token_hash: row for row in session.query(ApiToken)}

            def row_of(headers):
                return sessions[_hash_token(headers["Authorization"].split()[1])]

            row_of(signed_out).revoked_at = utcnow()
            row_of(expired).expires_at = utcnow() - timedelta(seconds=1)
            session.get(ApiToken, recently["id"]).revoked_at = utcnow()
            session.get(ApiToken, long_ago["id"]).revoked_at = utcnow() - timedelta(days=31)
            gone = [row_of(signed_out).id, row_of(expired).id, long_ago["id"]]
            kept = row_of(auth).id

        login(client, admin_password)

        for token_id in gone:
            assert token_row(token_id) is None
        assert token_row(kept) is not None
        assert token_row(recently["id"]).revoked_at is not None  # still listed as revoked
        names = [t["name"] for t in client.get("/api/v1/tokens", headers=auth).json()["items"]]
        assert names == ["recent"]


def test_a_new_data_dir_is_private(tmp_path, monkeypatch):
    from tuneyard.api import prepare
    from tuneyard.config import reset_settings

    data = tmp_path / "new" / "tuneyard-data"
    monkeypatch.setenv("TUNEYARD_DATA_DIR", str(data))
    reset_settings()
    prepare(announce=lambda _text: None)
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(data / "admin-password.txt").st_mode) == 0o600
