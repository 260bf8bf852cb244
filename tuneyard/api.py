"""create_app(): the FastAPI application with every router, the error shape, and start-up."""

from __future__ import annotations

import asyncio
import functools
import logging
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from tuneyard import __version__
from tuneyard.config import get_settings
from tuneyard.errors import AppError, error_responses
from tuneyard.readiness import Readiness, check_readiness

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


class ErrorOut(BaseModel):
    """What every error of the API answers."""

    error: str = Field(description="The kind of error, e.g. NotFound, Invalid, Conflict.")
    detail: str = Field(description="What went wrong and what to do about it.")


def _error(request: Request, status: int, error: str, detail: str, headers=None) -> JSONResponse:
    from tuneyard.chat.gateway import GATEWAY_PREFIX, openai_error

    if request.url.path.startswith(f"{GATEWAY_PREFIX}/"):
        return openai_error(status, error, detail, headers)
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        message = str(err.get("msg")).removeprefix("Value error, ")
        parts.append(f"{where or 'request'}: {message}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    from tuneyard.gate import Refused

    @app.exception_handler(AppError)
    async def app_error(request: Request, exc: AppError):
        return _error(request, exc.status, type(exc).__name__, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return _error(request, 422, "Invalid", _validation_detail(exc))

    @app.exception_handler(DataError)
    async def unstorable_value(request: Request, exc: DataError):
        # The database refused a value of the request as data (PostgreSQL: a NUL character in
        # a text, a text longer than its column): the input is at fault, and nothing was kept.
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else "refused"
        detail = f"A value in the request cannot be stored ({reason}); remove or shorten it."
        return _error(request, 422, "Invalid", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(exc, Refused):
            return await app_error(request, exc.error)
        names = {cls.status: cls.__name__ for cls in AppError.__subclasses__()}
        names[405] = "MethodNotAllowed"
        return _error(
            request,
            exc.status_code,
            names.get(exc.status_code, "HTTPError"),
            str(exc.detail),
            exc.headers,
        )


def api_router() -> APIRouter:
    from tuneyard.assessment.routes import router as assessment_router
    from tuneyard.auth.routes import router as auth_router
    from tuneyard.basemodels.routes import router as base_router
    from tuneyard.chat.routes import router as chat_router
    from tuneyard.complete.routes import router as complete_router
    from tuneyard.customized.routes import router as customized_router
    from tuneyard.dashboard.routes import router as dashboard_router
    from tuneyard.datasets.routes import router as datasets_router
    from tuneyard.deploy.routes import router as deploy_router
    from tuneyard.images.routes import image_models_router, images_router
    from tuneyard.jobs.routes import router as jobs_router
    from tuneyard.knowledge.routes import router as knowledge_router
    from tuneyard.modelref.routes import router as modelref_router
    from tuneyard.thirdparty.routes import router as thirdparty_router
    from tuneyard.training.routes import router as training_router

    # Every route answers its errors in one shape, documented here once.
    router = APIRouter(prefix=API_PREFIX, responses=error_responses(ErrorOut))

    @router.get("/health", tags=["system"])
    def health():
        settings = get_settings()
        return {
            "status": "ok",
            "version": __version__,
            "mode": settings.mode,
            "database": settings.db_url.split(":", 1)[0].split("+")[0],
        }

    @router.get(
        "/health/ready",
        tags=["system"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready; `reasons` say why."}},
    )
    def ready():
        """200 when the database answers, its schema is current and a worker was seen
        recently; 503 with the reasons otherwise. The job backlog is counted either way."""
        readiness = check_readiness()
        return JSONResponse(readiness.model_dump(), status_code=200 if readiness.ready else 503)

    for sub in (
        auth_router,
        jobs_router,
        base_router,
        datasets_router,
        training_router,
        customized_router,
        complete_router,
        deploy_router,
        thirdparty_router,
        chat_router,
        assessment_router,
        knowledge_router,
        image_models_router,
        images_router,
        dashboard_router,
        modelref_router,
    ):
        router.include_router(sub)
    return router


def prepare(announce=print, migrate: bool = False) -> None:
    """Bring the database's schema up to date (see db.ensure_schema for when it may), create
    the first admin on a first start, finish deletions a crash interrupted, and make the import
    folder models are registered from by default.

    Any number of processes may prepare one database at once: they take turns under
    db.schema_lock, so it is migrated once and gets exactly one first admin."""
    from tuneyard.auth.service import ensure_bootstrap
    from tuneyard.db import ensure_schema, schema_lock, session_scope
    from tuneyard.storage import Layout, finish_pending_deletions

    settings = get_settings()
    with schema_lock(settings, announce):
        ensure_schema(settings, migrate=migrate, announce=announce)
        with session_scope(settings) as session:
            password = ensure_bootstrap(session, settings)
            finish_pending_deletions(session, settings)
    settings.import_dir.mkdir(parents=True, exist_ok=True)
    if password:
        announce(
            "Created project 1001 with user 'admin', password: "
            f"{password}\n(also in {Layout(settings).admin_password_file}, readable by you only)"
        )


@functools.cache
def routes() -> tuple[BaseRoute, ...]:
    """The API's and the gateways' routes, built once per process: building a route (its
    request and response models) is most of the cost of an app, and routes hold nothing of
    the app they serve, so every app made here shares them."""
    from tuneyard.chat.gateway import router as gateway_router
    from tuneyard.images.gateway import router as image_gateway_router

    everything = APIRouter()
    everything.include_router(api_router())
    everything.include_router(gateway_router)
    everything.include_router(image_gateway_router)
    return tuple(everything.routes)


def create_app(run_worker: bool = False, console: bool = False) -> FastAPI:
    """The API (and, with run_worker, a job executor in the same process; with console, the
    web console at /console: once per process, NiceGUI is global)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        executor = supervisor = None
        if run_worker:
            from tuneyard.deploy.supervisor import Supervisor
            from tuneyard.jobs.engines import new_executor

            executor = new_executor()
            executor.start()
            # The worker's host also runs the llama.cpp servers of managed environments.
            supervisor = Supervisor()
            supervisor.start()
        yield
        if executor is not None:
            # After uvicorn's graceful shutdown let the requests finish: jobs go to other
            # workers (see Executor.drain), without blocking the event loop meanwhile.
            await asyncio.to_thread(executor.drain)
        if supervisor is not None:
            supervisor.stop()
        # Chats start the inference process on demand; it ends with the server.
        from tuneyard.inference.process import running_inference, stop_inference

        if running_inference() is not None:
            stop_inference()

    app = FastAPI(
        title="Tuneyard",
        version=__version__,
        description="The lifecycle of fine-tuned language models.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    from tuneyard.gate import RequestGate

    app.add_middleware(RequestGate)
    app.router.routes.extend(routes())
    if console:
        from tuneyard.console.app import mount_console

        mount_console(app)
    return app
