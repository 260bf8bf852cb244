"""Console pages for knowledge bases: the list with a new-base form, and one base's documents
(uploads following their jobs), index versions (rebuilt with another model or chunking) and a
retrieval playground whose passages open in their document's text."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nicegui import ui
from pydantic import ValidationError

from tuneyard import modelref
from tuneyard.basemodels import service as base_models
from tuneyard.config import get_settings
from tuneyard.console.jobs import JobWatch, job_card
from tuneyard.console.session import act, call, current_principal, read
from tuneyard.console.shell import console_page
from tuneyard.console.widgets import (
    STATUS_SLOT,
    PagedTable,
    actions_slot,
    cannot,
    column,
    confirm_delete,
    delete_button,
    error_label,
    facts,
    heading,
    needs,
    size_text,
    when,
)
from tuneyard.errors import AppError
from tuneyard.knowledge import retrieval, service
from tuneyard.knowledge.passage_dialog import open_passage
from tuneyard.knowledge.schemas import NAME_MAX, TOP_K_MAX, ChunkingIn
from tuneyard.models import KnowledgeBase

SECTION = "/knowledge"
SPLITTERS = {
    "recursive": "Recursive (paragraphs, lines, sentences)",
    "markdown": "Markdown (headings first)",
}
MODES = {"hybrid": "Hybrid (BM25 + vector)", "vector": "Vector", "fulltext": "Full text (BM25)"}
DEFAULT_CHUNKING = ChunkingIn()
BASE_COLUMNS = [
    column("name", "Name"),
    column("documents", "Documents"),
    column("model", "Embedding model", wide_only=True),
    column("chunking", "Chunking", wide_only="gt-sm"),
    column("chunks", "Chunks", wide_only=True),
    column("status", "Index"),
]
DOCUMENT_COLUMNS = [
    column("name", "File"),
    column("status", "Status"),
    column("pages", "Pages", wide_only=True),
    column("chunks", "Chunks"),
    column("size", "Size", wide_only="gt-sm"),
    column("error", "Error", wide_only=True),
]
INDEX_COLUMNS = [
    column("version", "Version"),
    column("status", "State"),
    column("model", "Embedding model"),
    column("dimensions", "Dimensions", wide_only="gt-sm"),
    column("chunking", "Chunking", wide_only=True),
    column("documents", "Documents", wide_only="gt-sm"),
    column("chunks", "Chunks"),
    column("activated", "Active since", wide_only="gt-sm"),
]


def _chunking_text(chunking: dict[str, Any] | None) -> str:
    if not chunking:
        return ""
    return (
        f"{chunking.get('splitter')}, {chunking.get('size')} tokens, "
        f"{chunking.get('overlap')} overlap"
    )


def _embedding_choices(session, principal) -> dict[str, str]:
    models = modelref.list_models(session, principal, modelref.Capability.EMBED)
    return {str(model.ref): f"{model.name} ({model.kind.value})" for model in models}


def _chunking_form(chunking: dict[str, Any]) -> Callable[[ui.label], ChunkingIn | None]:
    """Splitter, size and overlap fields; the returned function reads them as a ChunkingIn, or
    says in `problem` what to fix and answers None."""
    with ui.element("div").classes("grid grid-cols-1 sm:grid-cols-3 gap-3 w-full"):
        splitter = ui.select(SPLITTERS, label="Splitter", value=chunking["splitter"]).props(
            'outlined dense data-testid="kb-splitter"'
        )
        size = ui.number("Chunk size (tokens)", value=chunking["size"], min=32, precision=0)
        size.props('outlined dense data-testid="kb-size"')
        overlap = ui.number("Overlap (tokens)", value=chunking["overlap"], min=0, precision=0)
        overlap.props('outlined dense data-testid="kb-overlap"')

    def checked(problem: ui.label) -> ChunkingIn | None:
        try:
            return ChunkingIn(
                splitter=splitter.value,
                size=int(size.value) if size.value is not None else DEFAULT_CHUNKING.size,
                overlap=int(overlap.value) if overlap.value is not None else 0,
            )
        except ValidationError as exc:
            problem.text = "; ".join(
                f"chunking {'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
                for error in exc.errors()
            )
            return None

    return checked


# -- the list ------------------------------------------------------------------------------


def _base_row(session, kb: KnowledgeBase) -> dict[str, Any]:
    shown = service.describe(session, kb)
    active = shown["active_index"] or {}
    building = shown["building_index"]
    return {
        "id": kb.id,
        "name": kb.name,
        "documents": shown["documents"],
        "model": active.get("embedding_name", ""),
        "chunking": _chunking_text(active.get("chunking")),
        "chunks": active.get("chunks", 0),
        "status": "building" if building else ("active" if active else "none"),
    }


def _base_rows(session, principal, limit: int, offset: int):
    bases, total = service.list_knowledge_bases(session, principal, limit, offset)
    return [_base_row(session, kb) for kb in bases], total


@console_page("/knowledge", "Knowledge", SECTION)
def knowledge_page():
    heading(
        "Knowledge",
        "Documents chat answers are grounded in: upload them to a knowledge base, then search "
        "it here or ground a chat in it.",
    )
    principal = current_principal()
    member = principal.allows("member")
    table = PagedTable(
        BASE_COLUMNS,
        _base_rows,
        link=lambda row: f"/knowledge/{row['id']}",
        empty="No knowledge bases yet."
        + (" Create one below." if member else " A member of the project can create one."),
    )
    table.table.props('data-testid="kb-table"')
    if member:
        table.table.columns = [*table.table.columns, column("actions", "", align="right")]
        table.table.add_slot(
            "body-cell-actions", actions_slot([("Delete", "drop", "negative", "")])
        )
        table.table.on(
            "drop", lambda event: _confirm_delete_base(event.args["id"], event.args["name"])
        )
        _new_form()
    else:
        cannot(f"Creating knowledge bases: {principal.refusal('member')}")


def _confirm_delete_base(kb_id: str, name: str) -> None:
    confirm_delete(
        f"Delete knowledge base {name}?",
        "Its documents, their text and every index version are deleted. The embedding model "
        "and chats that cited it stay.",
        call(service.delete_knowledge_base, kb_id),
        done=f"Deleted knowledge base {name}",
        then=lambda: ui.navigate.to(SECTION),
    )


def _demo_embedding_hint() -> None:
    """No embedding model yet: say where one comes from, and offer the demo one."""
    needs("A knowledge base", [("an embedding model", "/base-models")])
    try:
        base_models.demo_embedding_folder()
        missing = None
    except AppError as exc:
        missing = exc.message

    async def add_demo() -> None:
        added = await act(
            lambda session, principal: base_models.add_demo_embedding(session, principal).id,
            done=f"Added {base_models.DEMO_EMBEDDING_NAME}",
        )
        if added is not None:
            ui.navigate.reload()

    with ui.row().classes("items-center gap-3 w-full"):
        button = ui.button("Add the demo embedding model", icon="bolt", on_click=add_demo).props(
            'no-caps outline data-testid="add-demo-embedding"'
        )
        if missing:
            button.disable()
            cannot(missing)
        else:
            ui.label(
                f"{base_models.DEMO_EMBEDDING_NAME}: small and local, 384 dimensions. "
                "Adding the demo models on Base Models adds it too."
            ).classes("text-grey-7 text-sm")


def _new_form() -> None:
    models = read(_embedding_choices)
    if not models:
        _demo_embedding_hint()
        return
    with ui.card().classes("w-full").props('flat bordered data-testid="kb-form"'):
        ui.label("New knowledge base").classes("text-lg font-semibold")
        with ui.element("div").classes("grid grid-cols-1 md:grid-cols-2 gap-3 w-full"):
            name = ui.input("Name").props(
                f'outlined dense maxlength={NAME_MAX} data-testid="kb-name"'
            )
            model = ui.select(
                models, label="Embedding model", value=next(iter(models)), with_input=True
            ).props('outlined dense data-testid="kb-model"')
        description = ui.textarea("Description (optional)").props("outlined dense autogrow")
        description.classes("w-full")
        chunking = _chunking_form(DEFAULT_CHUNKING.model_dump())
        ui.label(
            "The embedding model and chunking can be changed later: a new index version is "
            "built while this one keeps answering."
        ).classes("text-xs text-grey-7")
        problem = error_label("kb-error")

        async def create() -> None:
            problem.text = ""
            if not (name.value or "").strip():
                problem.text = "Name the knowledge base."
                return
            settings = chunking(problem)
            if settings is None:
                return
            created = await act(
                lambda session, principal: (
                    service.create_knowledge_base(
                        session,
                        principal,
                        name=name.value,
                        description=description.value or "",
                        embedding_model=model.value or "",
                        chunking=settings,
                    ).id
                ),
                error_label=problem,
            )
            if created is not None:
                ui.navigate.to(f"{SECTION}/{created}")

        ui.button("Create knowledge base", icon="add", on_click=create).props(
            'no-caps data-testid="kb-create"'
        )


# -- one knowledge base --------------------------------------------------------------------


def _base_view(session, principal, kb_id: str) -> dict[str, Any]:
    return service.describe(session, service.get_knowledge_base(session, principal, kb_id))


@console_page("/knowledge/{kb_id}", "Knowledge base", SECTION)
def knowledge_base_page(kb_id: str):
    kb = read(call(_base_view, kb_id))
    principal = current_principal()
    member = principal.allows("member")
    heading(kb["name"], kb["description"])

    # What a finished upload or a deletion changes: the counts, and each version's.
    @ui.refreshable
    def summary() -> None:
        _facts(read(call(_base_view, kb_id)))

    @ui.refreshable
    def versions() -> None:
        _indexes(kb_id, member)

    def changed() -> None:
        summary.refresh()
        versions.refresh()

    summary()
    if member:
        delete_button(lambda: _confirm_delete_base(kb["id"], kb["name"]), testid="kb-delete")
    else:
        cannot(f"Uploading, deleting and rebuilding: {principal.refusal('member')}")
    _documents(kb, member, changed)
    versions()
    _playground(kb)


def _facts(kb: dict[str, Any]) -> None:
    active = kb["active_index"]
    with ui.card().classes("w-full").props('flat bordered data-testid="kb-facts"'):
        facts(
            [
                ("Embedding model", active["embedding_name"] if active else "none"),
                ("Chunking", _chunking_text(active["chunking"]) if active else ""),
                ("Documents", kb["documents"]),
                ("Chunks", active["chunks"] if active else 0),
                ("Index version", active["version"] if active else "none"),
                ("Created", when(kb["created_at"])),
            ]
        )


# -- documents -----------------------------------------------------------------------------


def _document_rows(kb_id: str):
    def rows(session, principal, limit: int, offset: int):
        documents, total = service.list_documents(session, principal, kb_id, limit, offset)
        shown = []
        for document in documents:
            described = service.describe_document(session, document)
            shown.append(
                {
                    "id": document.id,
                    "name": document.filename,
                    "status": document.status,
                    "pages": described["pages"] or "",
                    "chunks": described["chunks"] if document.status == "ready" else "",
                    "size": size_text(document.size_bytes),
                    "error": document.error or "",
                    "job_id": document.job_id,
                }
            )
        return shown, total

    return rows


def _add_document(session, principal, *, kb_id: str, path: str, filename: str):
    with open(path, "rb") as content:
        document, job = service.add_document(
            session, principal, kb_id, filename=filename, content=content
        )
    return document.id, job.id


def _documents(kb: dict[str, Any], member: bool, changed: Callable[[], None]) -> None:
    """The documents table; uploads and deletions then call `changed`."""
    from tuneyard.knowledge.documents import SUPPORTED_SUFFIXES

    with ui.card().classes("w-full").props('flat bordered data-testid="kb-documents"'):
        ui.label("Documents").classes("text-lg font-semibold")
        table = PagedTable(
            DOCUMENT_COLUMNS,
            _document_rows(kb["id"]),
            empty="No documents yet."
            + (" Upload some below." if member else " A member of the project can upload them."),
        )
        table.table.props('data-testid="document-table"')
        if not member:
            return
        table.table.columns = [*table.table.columns, column("actions", "", align="right")]
        table.table.add_slot(
            "body-cell-actions", actions_slot([("Delete", "drop-document", "negative", "")])
        )

        def reload() -> None:
            table.load()
            changed()

        def ask_delete(event) -> None:
            row = event.args
            confirm_delete(
                f"Delete {row['name']}?",
                "The document and its chunks leave every index version; answers cited from it "
                "before keep their citation text.",
                call(service.delete_document, kb["id"], row["id"]),
                done=f"Deleted {row['name']}",
                then=reload,
            )

        table.table.on("drop-document", ask_delete)
        _upload(kb["id"], SUPPORTED_SUFFIXES, reload)


def _upload(kb_id: str, suffixes: tuple[str, ...], refresh: Callable[[], None]) -> None:
    limit = get_settings().knowledge_max_file_bytes
    ui.label(
        f"Upload {', '.join(suffixes)} files (up to {size_text(limit)} each); each is read, "
        "chunked and embedded by a job whose progress shows below."
    ).classes("text-grey-7 text-sm")
    progress = ui.column().classes("w-full gap-2").props('data-testid="upload-jobs"')

    async def received(event) -> None:
        filename = Path(event.file.name).name
        handle, path = tempfile.mkstemp(prefix="tuneyard-kb-", suffix=Path(filename).suffix)
        os.close(handle)
        try:
            await event.file.save(path)
            added = await act(call(_add_document, kb_id=kb_id, path=path, filename=filename))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if added is None:
            return
        _document_id, job_id = added
        refresh()
        with progress, ui.card().classes("w-full").props("flat bordered"):
            ui.label(filename).classes("font-medium wrap-anywhere")
            JobWatch(job_id, lambda _job: refresh())

    upload = ui.upload(
        label="Documents",
        multiple=True,
        auto_upload=True,
        max_file_size=limit,
        on_upload=received,
        on_rejected=lambda: ui.notify(
            f"A file is larger than {size_text(limit)}; split it into smaller ones.",
            type="negative",
        ),
    )
    upload.props(f'accept="{",".join(suffixes)}" flat bordered data-testid="kb-upload"')
    upload.classes("w-full max-w-md")
    # Each file's job is followed below; the uploader is emptied for the next ones.
    upload.on_multi_upload(upload.reset)


# -- index versions ------------------------------------------------------------------------


def _index_rows(session, principal, kb_id: str) -> list[dict[str, Any]]:
    rows = []
    for index in service.list_indexes(session, principal, kb_id):
        shown = service.describe_index(session, index) or {}
        rows.append(
            {
                "id": index.id,
                "version": index.version,
                "status": index.state,
                "model": index.embedding_name,
                "dimensions": index.dimensions or "",
                "chunking": _chunking_text(index.chunking),
                "documents": shown["documents"],
                "chunks": shown["chunks"],
                "activated": when(index.activated_at),
                "error": index.error,
                "job_id": index.job_id,
            }
        )
    return rows


def _indexes(kb_id: str, member: bool) -> None:
    rows = read(call(_index_rows, kb_id))
    with ui.card().classes("w-full").props('flat bordered data-testid="kb-indexes"'):
        ui.label("Index versions").classes("text-lg font-semibold")
        ui.label(
            "Each version is one embedding model and one chunking. A rebuild makes a new "
            "version; the active one answers until the new one holds every document."
        ).classes("text-grey-7 text-sm -mt-1")
        table = ui.table(
            columns=[{"align": "left", **spec} for spec in INDEX_COLUMNS],
            rows=rows,
            row_key="id",
        )
        table.props('flat bordered wrap-cells hide-bottom data-testid="index-table"')
        table.classes("w-full").add_slot("body-cell-status", STATUS_SLOT)
        for row in rows:
            if row["status"] == "building" and row["job_id"]:
                job_card(f"Building version {row['version']}", row["job_id"], bordered=True)
            if row["status"] == "failed" and row["error"]:
                ui.label(f"Version {row['version']} failed: {row['error']}").classes(
                    "text-negative whitespace-pre-wrap wrap-anywhere"
                )
        if member:
            building = any(row["status"] == "building" for row in rows)
            button = ui.button(
                "Rebuild with…", icon="sync", on_click=lambda: _rebuild_dialog(kb_id)
            ).props('outline no-caps data-testid="kb-rebuild"')
            if building:
                button.disable()
                cannot("A version is being built; rebuild again once it is done.")


def _rebuild_dialog(kb_id: str) -> None:
    kb = read(call(_base_view, kb_id))
    models = read(_embedding_choices)
    active = kb["active_index"] or {}
    current = active.get("embedding_model")
    if current and current not in models:
        models = {current: f"{active.get('embedding_name', current)} (current)", **models}
    with ui.dialog() as dialog, ui.card().classes("w-full max-w-xl"):
        dialog.props('data-testid="rebuild-dialog"')
        ui.label(f"Rebuild {kb['name']}'s index").classes("text-lg font-semibold")
        ui.label(
            "A new version is built with these settings from every document; searches keep "
            "using the active version until it is complete."
        ).classes("text-grey-8")
        model = ui.select(
            models, label="Embedding model", value=current or next(iter(models), None)
        ).props('outlined dense data-testid="rebuild-model"')
        model.classes("w-full")
        chunking = _chunking_form(active.get("chunking") or DEFAULT_CHUNKING.model_dump())
        problem = error_label("rebuild-error")

        async def rebuild() -> None:
            problem.text = ""
            settings = chunking(problem)
            if settings is None:
                return
            started = await act(
                call(
                    service.start_reindex,
                    kb["id"],
                    embedding_model=model.value or None,
                    chunking=settings,
                ),
                done="Building a new index version",
                error_label=problem,
            )
            if started is not None:
                dialog.close()
                ui.navigate.reload()

        with ui.row().classes("w-full justify-end"):
            ui.button("Cancel", on_click=dialog.close).props("flat no-caps")
            ui.button("Build the new version", icon="sync", on_click=rebuild).props(
                'no-caps data-testid="rebuild-start"'
            )
    dialog.open()


# -- retrieval playground ------------------------------------------------------------------


def _score(value: float | None, rank: int | None, digits: int = 4) -> str:
    if value is None:
        return "not found"
    return f"{value:.{digits}f} (#{rank})" if rank is not None else f"{value:.{digits}f}"


def _playground(kb: dict[str, Any]) -> None:
    with ui.card().classes("w-full").props('flat bordered data-testid="playground"'):
        ui.label("Retrieval playground").classes("text-lg font-semibold")
        ui.label(
            "What a grounded chat would be given: the passages that answer a query, with why "
            "each was found."
        ).classes("text-grey-7 text-sm -mt-1")
        with ui.row().classes("items-end gap-3 w-full"):
            query = (
                ui.input("Query")
                .props('outlined dense data-testid="search-query"')
                .classes("grow min-w-[12rem]")
            )
            top_k = ui.number("Top k", value=5, min=1, max=TOP_K_MAX, precision=0)
            top_k.props('outlined dense data-testid="search-top-k"').classes("w-24")
            mode = ui.select(MODES, label="Mode", value="hybrid").props(
                'outlined dense data-testid="search-mode"'
            )
            mode.classes("w-56")
            search = ui.button("Search", icon="search").props('no-caps data-testid="search"')
        problem = error_label("search-error")
        results = ui.column().classes("w-full gap-2").props('data-testid="passages"')

    async def run_search() -> None:
        problem.text = ""
        search.props("loading")
        try:
            found = await act(
                call(
                    retrieval.search,
                    kb["id"],
                    query.value or "",
                    top_k=int(top_k.value or 5),
                    mode=mode.value,
                ),
                error_label=problem,
            )
        finally:
            search.props(remove="loading")
        if found is None:
            return
        results.clear()
        with results:
            passages = found["passages"]
            ui.label(
                f"{len(passages)} passages from index version {found['index_version']} "
                f"({MODES[found['mode']]}"
                + (f", reranked by {found['reranker']}" if found["reranker"] else "")
                + ")."
                if passages
                else "No passage matches: upload documents, or wait until they are ready."
            ).classes("text-grey-8")
            for number, passage in enumerate(passages, 1):
                _passage_card(kb["id"], number, passage)

    search.on_click(run_search)
    query.on("keydown.enter", run_search)


def _passage_card(kb_id: str, number: int, passage: dict[str, Any]) -> None:
    with ui.card().classes("w-full").props(f'flat bordered data-testid="passage-{number}"'):
        with ui.row().classes("items-center gap-2 w-full"):
            ui.label(f"#{number}").classes("font-semibold")
            ui.label(passage["filename"]).classes("font-medium wrap-anywhere")
            ui.badge(passage["page_label"], color="secondary").props('data-testid="page-label"')
            if passage["heading"]:
                ui.label(passage["heading"]).classes("text-grey-8 wrap-anywhere")
            ui.space()
            ui.button(
                "Open in document",
                icon="article",
                on_click=lambda: open_passage(kb_id, passage),
            ).props('flat dense no-caps data-testid="open-passage"')
        with ui.row().classes("gap-x-6 gap-y-1 text-sm").props('data-testid="passage-scores"'):
            if passage.get("rerank_score") is not None:
                ui.label(f"Rerank: {passage['rerank_score']:.4f}")
            ui.label(f"Fused: {passage['score']:.4f}")
            ui.label(f"Vector: {_score(passage['vector_score'], passage['vector_rank'])}")
            ui.label(f"BM25: {_score(passage['text_score'], passage['text_rank'])}")
            ui.label(f"Characters {passage['start']:,}–{passage['end']:,}").classes("text-grey-7")
        ui.label(passage["text"]).classes(
            "whitespace-pre-wrap wrap-anywhere bg-grey-2 rounded p-2 w-full"
        ).props('data-testid="passage-text"')
