"""How the console shows jobs: a job's live status, a card that follows one, what a job is
called, and the notice on any page when one of the user's jobs ends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from nicegui import ui

from tuneyard.console.session import SignedOut, act, fetch, read
from tuneyard.console.widgets import set_status, status_badge
from tuneyard.errors import AppError
from tuneyard.jobs import service
from tuneyard.models import utcnow

JOB_POLL_SECONDS = 1.0
NOTICE_SECONDS = 3.0


def job_label(kind: str) -> str:
    """'training.run' -> 'training: run', as job notices say it."""
    return kind.replace("_", " ").replace(".", ": ")


class JobWatch:
    """A job's live status: badge, progress bar and message, updated without reloading.

    `on_finish(job)` runs once when the job ends (succeeded, failed or cancelled).
    """

    def __init__(
        self,
        job_id: str,
        on_finish: Callable[[Any], Awaitable[Any] | Any] | None = None,
        *,
        cancellable: bool = True,
    ):
        self.job_id = job_id
        self.on_finish = on_finish
        with ui.column().classes("w-full gap-1").props(f'data-testid="job-{job_id}"') as self.box:
            with ui.row().classes("items-center gap-2"):
                self.badge = status_badge("queued")
                self.message = ui.label("").classes("text-grey-8")
                self.cancel_button: ui.button | None = None
                if cancellable:
                    self.cancel_button = ui.button("Cancel", on_click=self.cancel).props(
                        "flat dense color=negative no-caps"
                    )
            self.bar = ui.linear_progress(value=0, show_value=False).props("rounded size=10px")
            self.error = ui.label("").classes("text-negative whitespace-pre-wrap")
            self.error.set_visibility(False)
        job = read(lambda session, principal: service.get_job(session, principal, job_id))
        # Only an unfinished job is watched: on_finish is for an end seen happening.
        self.timer = ui.timer(JOB_POLL_SECONDS, self.poll, active=not self._apply(job))

    def _apply(self, job) -> bool:
        set_status(self.badge, job.status)
        self.bar.value = (job.progress or 0) / 100
        self.message.text = f"{job.progress:.0f}% · {job.message}" if job.message else ""
        finished = job.status in service.FINISHED
        if job.error:
            self.error.text = job.error
            self.error.set_visibility(True)
        if self.cancel_button is not None:
            self.cancel_button.set_visibility(not finished)
        return finished

    async def poll(self) -> None:
        try:
            job = await fetch(
                lambda session, principal: service.get_job(session, principal, self.job_id)
            )
        except (SignedOut, AppError):
            self.timer.cancel()
            return
        if self._apply(job):
            self.timer.cancel()
            if self.on_finish is not None:
                result = self.on_finish(job)
                if hasattr(result, "__await__"):
                    await result

    async def cancel(self) -> None:
        job = await act(
            lambda session, principal: service.cancel_job(session, principal, self.job_id),
            done="Cancelling",
        )
        if job is not None:
            self._apply(job)


def job_card(title: str, job_id: str, *, bordered: bool = False) -> None:
    """A card watching a job under `title`; the page reloads once the job ends."""
    card = ui.card().classes("w-full")
    if bordered:
        card.props("flat bordered")
    with card:
        ui.label(title).classes("font-medium")
        JobWatch(job_id, lambda _job: ui.navigate.reload())


def job_notices() -> None:
    """Tell the user when one of their jobs ends, on whatever page they are."""
    state = {"since": utcnow()}

    async def poll() -> None:
        try:
            jobs = await fetch(
                lambda session, principal: service.finished_since(
                    session, principal, state["since"]
                )
            )
        except (SignedOut, AppError):
            return
        for job in jobs:
            if job.finished_at is not None:  # a finished job has its time
                state["since"] = max(state["since"], job.finished_at)
            label = job_label(job.kind)
            if job.status == "succeeded":
                ui.notify(f"Job {label} succeeded", type="positive")
            elif job.status == "failed":
                ui.notify(
                    f"Job {label} failed: {job.error or job.message}",
                    type="negative",
                    multi_line=True,
                    close_button=True,
                )
            else:
                ui.notify(f"Job {label} was cancelled", type="warning")

    ui.timer(NOTICE_SECONDS, poll)
