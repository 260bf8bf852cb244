"""Login, tokens, roles and the wall between projects."""

from __future__ import annotations

import os
import stat

import pytest

from tests.helpers import login, make_project_user
from tuneyard.db import session_scope


class TestBootstrap:
    def test_first_start_creates_admin_with_private_password_file(self, data_dir, admin_password):
        path = data_dir / "admin-password.txt"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert len(admin_password) >= 12

    def test_second_start_keeps_the_password(self, data_dir, admin_password):
        from tuneyard.api import prepare

        said = []
        prepare(announce=said.append)
        assert said == []
        assert (data_dir / "admin-password.txt").read_text().strip() == admin_password


class TestLogin:
    def test_login_returns_a_working_token(self, client, admin_password):
        headers = login(client, admin_password)
        me = client.get("/api/v1/auth/me", headers=headers).json()
        assert me == {
            "user_id": me["user_id"],
            "username": "admin",
            "role": "admin",
            "operator": True,
            "project_code": "1001",
        }

    @pytest.mark.parametrize(
        "project,username,password",
        [("1001", "admin", "wrong-password"), ("1001", "nobody", "x"), ("9999", "admin", "x")],
    )
    def test_failures_say_the_same_thing(self, client, admin_password, project, username, password):
        response = client.post(
            "/api/v1/auth/login",
            json={"project_code": project, "username": username, "password": password},
        )
        assert response.status_code == 401
        assert response.json() == {
            "error": "Unauthorized",
            "detail": "Wrong project code, username or password.",
        }

    def test_missing_field_is_a_clear_422(self, client):
        response = client.post("/api/v1/auth/login", json={"username": "admin"})
        assert response.status_code == 422
        assert "project_code" in response.json()["detail"]

    def test_no_token(self, client):
        response = client.get("/api/v1/jobs")
        assert response.status_code == 401
        assert "Authorization: Bearer" in response.json()["detail"]

    def test_garbage_token(self, client):
        response = client.get("/api/v1/jobs", headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401
        assert "Invalid or revoked token" in response.json()["detail"]

    def test_health_needs_no_token_and_reports_mode(self, client):
        body = client.get("/api/v1/health").json()
        assert body["status"] == "ok"
        assert body["mode"] in ("full", "training-free")


class TestTokens:
    def test_create_use_list_revoke(self, client, auth):
        created = client.post("/api/v1/tokens", json={"name": "ci"}, headers=auth)
        assert created.status_code == 201
        secret = created.json()["token"]
        bearer = {"Authorization": f"Bearer {secret}"}
        assert client.get("/api/v1/auth/me", headers=bearer).status_code == 200

        listed = client.get("/api/v1/tokens", headers=auth).json()
        assert listed["total"] == 1
        assert "token" not in listed["items"][0]
        assert listed["items"][0]["last_used_at"] is not None

        token_id = created.json()["id"]
        assert client.delete(f"/api/v1/tokens/{token_id}", headers=auth).status_code == 200
        refused = client.get("/api/v1/auth/me", headers=bearer)
        assert refused.status_code == 401

    def test_tokens_are_stored_hashed(self, client, auth):
        from tuneyard.models import ApiToken

        secret = client.post("/api/v1/tokens", json={"name": "x"}, headers=auth).json()["token"]
        with session_scope() as session:
            hashes = [row.token_hash for row in session.query(ApiToken)]
        assert secret not in hashes and all(len(h) == 64 for h in hashes)

    def test_expired_token(self, client, auth):
        from datetime import timedelta

        from tuneyard.models import ApiToken, utcnow

        created = client.post("/api/v1/tokens", json={"name": "short", "days": 1}, headers=auth)
        with session_scope() as session:
            session.get(ApiToken, created.json()["id"]).expires_at = utcnow() - timedelta(1)
        bearer = {"Authorization": f"Bearer {created.json()['token']}"}
        response = client.get("/api/v1/auth/me", headers=bearer)
        assert response.status_code == 401
        assert "expired" in response.json()["detail"]


class TestUsersAndRoles:
    def test_admin_adds_member_who_logs_in(self, client, auth):
        response = client.post(
            "/api/v1/users",
            json={"username": "ana", "password": "correct-horse", "role": "member"},
            headers=auth,
        )
        assert response.status_code == 201
        assert response.json()["role"] == "member"
        assert "password" not in response.text and "hash" not in response.text
        login(client, "correct-horse", "ana")

    def test_member_cannot_manage_users(self, client, auth):
        client.post(
            "/api/v1/users",
            json={"username": "ana", "password": "correct-horse", "role": "member"},
            headers=auth,
        )
        member = login(client, "correct-horse", "ana")
        response = client.post(
            "/api/v1/users", json={"username": "bo", "password": "12345678"}, headers=member
        )
        assert response.status_code == 403
        assert "needs the admin role" in response.json()["detail"]

    def test_viewer_cannot_cancel_jobs(self, client, auth, principal):
        from tuneyard.jobs import service as jobs

        with session_scope() as session:
            job_id = jobs.enqueue(session, principal, "test.events").id
        client.post(
            "/api/v1/users",
            json={"username": "vi", "password": "correct-horse", "role": "viewer"},
            headers=auth,
        )
        viewer = login(client, "correct-horse", "vi")
        assert client.get(f"/api/v1/jobs/{job_id}", headers=viewer).status_code == 200
        assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=viewer).status_code == 403

    @pytest.mark.parametrize(
        "body,needle",
        [
            ({"username": "a b", "password": "12345678"}, "username"),
            ({"username": "ok", "password": "short"}, "password"),
            ({"username": "ok", "password": "12345678", "role": "king"}, "role"),
        ],
    )
    def test_bad_user_input(self, client, auth, body, needle):
        response = client.post("/api/v1/users", json=body, headers=auth)
        assert response.status_code == 422
        assert needle in response.json()["detail"]

    def test_duplicate_user(self, client, auth):
        body = {"username": "ana", "password": "correct-horse"}
        client.post("/api/v1/users", json=body, headers=auth)
        response = client.post("/api/v1/users", json=body, headers=auth)
        assert response.status_code == 409

    def test_last_admin_cannot_be_removed(self, client, auth):
        client.post(
            "/api/v1/users",
            json={"username": "root2", "password": "correct-horse", "role": "member"},
            headers=auth,
        )
        assert client.delete("/api/v1/users/admin", headers=auth).status_code == 409


class TestTenantIsolation:
    def test_other_projects_jobs_are_404(self, client, auth, principal):
        from tuneyard.jobs import service as jobs

        with session_scope() as session:
            job_id = jobs.enqueue(session, principal, "test.events").id
        make_project_user("2002", "eve", "eve-password")
        eve = login(client, "eve-password", "eve", "2002")
        assert client.get("/api/v1/jobs", headers=eve).json() == {"items": [], "total": 0}
        for method, url in [
            ("get", f"/api/v1/jobs/{job_id}"),
            ("get", f"/api/v1/jobs/{job_id}/logs"),
            ("post", f"/api/v1/jobs/{job_id}/cancel"),
        ]:
            response = getattr(client, method)(url, headers=eve)
            assert response.status_code == 404, (url, response.text)
        assert client.get(f"/api/v1/jobs/{job_id}", headers=auth).status_code == 200

    def test_same_username_in_two_projects(self, client, admin_password):
        make_project_user("2002", "admin", "other-password")
        mine = login(client, admin_password)
        theirs = login(client, "other-password", "admin", "2002")
        assert client.get("/api/v1/auth/me", headers=mine).json()["project_code"] == "1001"
        assert client.get("/api/v1/auth/me", headers=theirs).json()["project_code"] == "2002"

    def test_other_projects_users_are_invisible(self, client, auth):
        make_project_user("2002", "eve", "eve-password")
        names = [u["username"] for u in client.get("/api/v1/users", headers=auth).json()["items"]]
        assert names == ["admin"]
        assert client.delete("/api/v1/users/eve", headers=auth).status_code == 404
