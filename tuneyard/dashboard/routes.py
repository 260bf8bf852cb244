"""The dashboard's numbers."""

from __future__ import annotations

from fastapi import APIRouter

from tuneyard.dashboard import service
from tuneyard.deps import CurrentPrincipal, DbSession

router = APIRouter(tags=["dashboard"])


@router.get("/dashboard")
def dashboard(principal: CurrentPrincipal, session: DbSession):
    """Counts of each entity, trainings over the last 7 days, base model usage, and the live
    workers (host, jobs they run)."""
    return service.overview(session, principal)
