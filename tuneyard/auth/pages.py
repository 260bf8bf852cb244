"""The Users page: your password and API tokens, and (for admins) the project's users."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from tuneyard.auth import service
from tuneyard.auth.service import PASSWORD_MIN, ROLES, USERNAME_RE
from tuneyard.console.session import act, call, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import (
    PagedTable,
    actions_slot,
    cannot,
    column,
    confirm_delete,
    heading,
    when,
)
from tuneyard.models import utcnow

SECTION = "/users"
TOKEN_DAYS_MAX = 3650
# Columns a phone-sized window leaves out (wide_only), so the rest fits.
TOKEN_COLUMNS = [
    column("name", "Name"),
    column("prefix", "Starts with", wide_only=True),
    column("state", "State"),
    column("created", "Created", wide_only=True),
    column("expires", "Expires"),
    column("last_used", "Last used", wide_only=True),
    column("actions", "", field="id"),
]
USER_COLUMNS = [
    column("username", "Username"),
    column("role", "Role"),
    column("created", "Created", wide_only=True),
    column("actions", "", field="username"),
]
ROLE_HELP = {
    "admin": "admin: everything, and manages users",
    "member": "member: creates, trains, deploys and chats",
    "viewer": "viewer: looks and chats, changes nothing",
}


def _token_state(row) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at < utcnow():
        return "expired"
    return "active"


def _token_rows(session, principal, limit: int, offset: int):
    rows, total = service.list_tokens(session, principal, limit, offset)
    return [
        {
            "id": row.id,
            "name": row.name,
            "prefix": f"{row.prefix}…",
            "state": _token_state(row),
            "created": when(row.created_at),
            "expires": when(row.expires_at) or "never",
            "last_used": when(row.last_used_at) or "not yet",
        }
        for row in rows
    ], total


def _user_rows(session, principal, limit: int, offset: int):
    rows, total = service.list_users(session, principal, limit, offset)
    return [
        {
            "username": row.username,
            "role": row.role,
            "created": when(row.created_at),
            "me": row.id == principal.user_id,
        }
        for row in rows
    ], total


def _create_user(session, principal, username: str, password: str, role: str) -> str:
    return service.create_user(session, principal, username, password, role).username


def _create_token(session, principal, name: str, days: int | None) -> str:
    token, _row = service.create_token(session, principal, name, days)
    return token


def show_secret(name: str, token: str) -> None:
    """The new token's secret, once: it is stored hashed and cannot be shown again."""
    with ui.dialog().props("persistent") as dialog, ui.card().classes("w-full max-w-lg gap-3"):
        dialog.props('data-testid="token-dialog"')
        ui.label(f"Token “{name}” created").classes("text-lg font-semibold")
        ui.label(
            "Copy it now: this is the only time it is shown. Send it as "
            "'Authorization: Bearer <token>' to the API (/api/v1) or the OpenAI-compatible "
            "gateway (/v1), or give it to the CLI."
        ).classes("text-grey-8")
        ui.input(value=token).props('readonly outlined dense data-testid="token-secret"').classes(
            "w-full font-mono"
        )

        def copy() -> None:
            ui.clipboard.write(token)
            ui.notify("Copied to the clipboard", type="positive")

        def close() -> None:
            dialog.close()
            dialog.delete()  # the secret leaves the page with the dialog

        with ui.row().classes("w-full justify-end gap-2"):
            ui.button("Copy", icon="content_copy", on_click=copy).props(
                'no-caps data-testid="copy-token"'
            )
            ui.button("I stored it", on_click=close).props('flat no-caps data-testid="close-token"')
    dialog.open()


def _password_input(label: str, testid: str, rules: dict) -> ui.input:
    field = (
        ui.input(label, password=True, password_toggle_button=True, validation=rules)
        .props(f'outlined dense data-testid="{testid}"')
        .classes("w-full sm:w-56")
    )
    field.without_auto_validation()
    return field


def password_section() -> None:
    address = ui.context.client.ip or "unknown"
    long_enough = {f"At least {PASSWORD_MIN} characters": lambda v: len(v or "") >= PASSWORD_MIN}
    with ui.card().classes("w-full gap-3").props('data-testid="password"'):
        ui.label("Your password").classes("text-lg font-semibold")
        ui.label(
            "Changing it signs you out everywhere else; this browser and your API tokens "
            "keep working."
        ).classes("text-grey-8 -mt-2")
        with ui.row().classes("w-full items-start gap-2 flex-wrap"):
            current = _password_input(
                "Current password", "current-password", {"Required": lambda v: bool(v)}
            )
            new = _password_input("New password", "change-password", long_enough)
            again = _password_input(
                "New password again",
                "change-password-again",
                {"Not the same as the new password": lambda v: v == new.value},
            )
            change = ui.button("Change password", icon="lock_reset").props(
                'no-caps data-testid="change-password-button"'
            )

    async def change_password() -> None:
        if not all([current.validate(), new.validate(), again.validate()]):
            return

        def change_it(session, principal) -> bool:
            service.change_password(session, principal, current.value, new.value, address)
            return True

        changed = await act(change_it, done="Password changed; your other sessions have ended.")
        if changed:
            for field in (current, new, again):
                field.value = ""

    change.on_click(change_password)
    again.on("keydown.enter", change_password)


def reset_password_dialog(username: str) -> None:
    """An admin sets another user's password; their sessions end."""
    with ui.dialog() as dialog, ui.card().classes("w-full max-w-md gap-3"):
        dialog.props('data-testid="reset-password-dialog"')
        ui.label(f"New password for {username}").classes("text-lg font-semibold")
        ui.label(
            f"{username} is signed out everywhere and logs in with the new password; tell "
            "them what it is. Their API tokens keep working."
        ).classes("text-grey-8")
        password = _password_input(
            "New password",
            "reset-password",
            {f"At least {PASSWORD_MIN} characters": lambda v: len(v or "") >= PASSWORD_MIN},
        )
        password.classes("w-full")

        async def save() -> None:
            if not password.validate():
                return

            def reset_it(session, principal) -> bool:
                service.reset_password(session, principal, username, password.value)
                return True

            changed = await act(reset_it, done=f"Password of {username} changed")
            if changed:
                dialog.close()
                dialog.delete()

        password.on("keydown.enter", save)
        with ui.row().classes("w-full justify-end gap-2"):
            ui.button("Cancel", on_click=dialog.close).props("flat no-caps")
            ui.button("Set password", on_click=save).props(
                'no-caps data-testid="reset-password-button"'
            )
    dialog.open()


def tokens_section() -> None:
    with ui.card().classes("w-full gap-3").props('data-testid="tokens"'):
        ui.label("Your API tokens").classes("text-lg font-semibold")
        ui.label(
            "For scripts, the CLI and OpenAI clients. Each acts as you, with your role."
        ).classes("text-grey-8 -mt-2")
        with ui.row().classes("w-full items-start gap-2 flex-wrap"):
            name = (
                ui.input(
                    "Token name",
                    validation={
                        "Give it a name of 1-100 characters": lambda v: (
                            0 < len((v or "").strip()) <= 100
                        )
                    },
                )
                .props('outlined dense data-testid="token-name"')
                .classes("w-full sm:w-64")
            )
            name.without_auto_validation()
            days = (
                ui.number(
                    "Expires after (days)",
                    min=1,
                    max=TOKEN_DAYS_MAX,
                    step=1,
                    validation={
                        f"1 to {TOKEN_DAYS_MAX} whole days, or empty for never": lambda v: (
                            v in (None, "") or (float(v) == int(v) and 1 <= v <= TOKEN_DAYS_MAX)
                        )
                    },
                )
                .props('outlined dense clearable data-testid="token-days"')
                .classes("w-full sm:w-48")
            )
            create = ui.button("Create token", icon="key").props(
                'no-caps data-testid="create-token"'
            )
        table = PagedTable(
            TOKEN_COLUMNS,
            _token_rows,
            empty="No API tokens yet: create one above for scripts and the CLI.",
            rows_per_page=10,
            status_column="state",
        )
        table.table.add_slot(
            "body-cell-actions",
            actions_slot([("Revoke", "revoke", "negative", "props.row.state == 'active'")]),
        )

        async def create_token() -> None:
            if not (name.validate() and days.validate()):
                return
            lifetime = int(days.value) if days.value not in (None, "") else None
            token = await act(call(_create_token, name.value.strip(), lifetime))
            if token is None:
                return
            show_secret(name.value.strip(), token)
            name.value = ""
            days.value = None
            table.load(1)

        def revoke(event) -> None:
            row = event.args
            confirm_delete(
                f"Revoke token “{row['name']}”?",
                "Scripts and clients using it stop working at once; it cannot be undone. Your "
                "other tokens and your console login are kept.",
                call(service.revoke_token, row["id"]),
                done="Token revoked",
                then=table.load,
                action="Revoke",
            )

        create.on_click(create_token)
        name.on("keydown.enter", create_token)
        table.table.on("revoke", revoke)


def users_section(principal) -> None:
    admin = principal.allows("admin")
    with ui.card().classes("w-full gap-3").props('data-testid="users"'):
        ui.label(f"Users of project {principal.project_code}").classes("text-lg font-semibold")
        if not admin:
            cannot(
                f"Only admins add or delete users; you are {principal.role}. Ask an admin of "
                "the project."
            )
        else:
            with ui.row().classes("w-full items-start gap-2 flex-wrap"):
                username = (
                    ui.input(
                        "Username",
                        validation={
                            "1-64 letters, digits, '.', '_' or '-'": lambda v: bool(
                                USERNAME_RE.fullmatch(v or "")
                            )
                        },
                    )
                    .props('outlined dense data-testid="new-username"')
                    .classes("w-full sm:w-48")
                )
                username.without_auto_validation()
                password = (
                    ui.input(
                        "Password",
                        password=True,
                        password_toggle_button=True,
                        validation={
                            f"At least {PASSWORD_MIN} characters": lambda v: (
                                len(v or "") >= PASSWORD_MIN
                            )
                        },
                    )
                    .props('outlined dense data-testid="new-password"')
                    .classes("w-full sm:w-48")
                )
                password.without_auto_validation()
                role = (
                    ui.select({r: ROLE_HELP[r] for r in ROLES}, value="member", label="Role")
                    .props('outlined dense data-testid="new-role"')
                    .classes("w-full sm:w-80")
                )
                add = ui.button("Add user", icon="person_add").props(
                    'no-caps data-testid="add-user"'
                )
        table = PagedTable(
            USER_COLUMNS if admin else [c for c in USER_COLUMNS if c["name"] != "actions"],
            _user_rows,
            empty="No users yet.",
            row_key="username",
            rows_per_page=10,
        )
        if admin:
            table.table.add_slot(
                "body-cell-actions",
                r"""
                <q-td :props="props">
                  <span v-if="props.row.me" class="text-grey-7 text-xs">you</span>
                  <template v-else>
                    <q-btn flat dense no-caps label="Password"
                           :data-testid="'reset-password-' + props.row.username"
                           @click.stop="() => $parent.$emit('reset_password', props.row)" />
                    <q-btn flat dense no-caps color="negative" label="Delete"
                           :data-testid="'delete-user-' + props.row.username"
                           @click.stop="() => $parent.$emit('delete_user', props.row)" />
                  </template>
                </q-td>
                """,
            )

    if not admin:
        return

    async def add_user() -> None:
        checks = [username.validate(), password.validate()]
        if not all(checks):
            return
        created = await act(
            call(_create_user, username.value.strip(), password.value, role.value),
            done=f"User {username.value.strip()} added",
        )
        if created is None:
            return
        username.value = ""
        password.value = ""
        table.load(1)

    def delete_user(event) -> None:
        row: dict[str, Any] = event.args
        confirm_delete(
            f"Delete user {row['username']}?",
            f"{row['username']} can no longer log in and their API tokens and chats are "
            "deleted. The models, datasets and trainings they made are kept in the project.",
            call(service.delete_user, row["username"]),
            done=f"User {row['username']} deleted",
            then=table.load,
        )

    add.on_click(add_user)
    password.on("keydown.enter", add_user)
    table.table.on("delete_user", delete_user)
    table.table.on("reset_password", lambda event: reset_password_dialog(event.args["username"]))


@console_page("/users", "Users", SECTION)
def users_page():
    principal = read(lambda _session, principal: principal)
    heading("Users", "Your password and API tokens, and who can use this project.")
    password_section()
    tokens_section()
    users_section(principal)
