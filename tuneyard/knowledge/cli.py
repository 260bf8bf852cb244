"""`tuneyard kb`: create knowledge bases, add documents, search, list, reindex and remove."""

from __future__ import annotations

from pathlib import Path

import typer

from tuneyard.client import path_part
from tuneyard.terminal import (
    JsonOption,
    api,
    console,
    err_console,
    fail,
    follow_job,
    print_json,
    print_record,
    print_table,
)

app = typer.Typer(
    help="Knowledge bases: documents to ground chat in, and search.", no_args_is_help=True
)


def _kb_path(ref: str) -> str:
    return f"/knowledge-bases/{path_part(ref)}"


def _index_line(index: dict | None) -> str:
    if not index:
        return "-"
    chunking = index["chunking"]
    return (
        f"v{index['version']} {index['embedding_name']} "
        f"({chunking['splitter']} {chunking['size']}/{chunking['overlap']}): "
        f"{index['documents']} documents, {index['chunks']} chunks"
    )


def _show(kb: dict) -> None:
    print_record(
        {
            "id": kb["id"],
            "name": kb["name"],
            "description": kb["description"],
            "documents": kb["documents"],
            "index": _index_line(kb["active_index"]),
            "building": _index_line(kb["building_index"]),
        }
    )


@app.command("create")
def create(
    name: str = typer.Argument(..., help="Unique in the project."),
    embedding_model: str = typer.Option(
        ...,
        "--embedding-model",
        "-e",
        help="An embedding model: base:<id>, third-party:<id> or a name.",
    ),
    description: str = typer.Option("", "--description", "-d"),
    splitter: str = typer.Option("recursive", help="recursive, or markdown (headings first)."),
    chunk_size: int = typer.Option(256, help="Tokens per chunk, at most."),
    chunk_overlap: int = typer.Option(32, help="Tokens carried into the next chunk."),
    as_json: bool = JsonOption,
):
    """Create a knowledge base."""
    body = {
        "name": name,
        "description": description,
        "embedding_model": embedding_model,
        "chunking": {"splitter": splitter, "size": chunk_size, "overlap": chunk_overlap},
    }
    with api() as client:
        kb = client.post("/knowledge-bases", body)
    print_json(kb) if as_json else _show(kb)


@app.command("add")
def add(
    kb: str = typer.Argument(..., help="The knowledge base, by id or name."),
    files: list[Path] = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        readable=True,
        help="PDF, DOCX, PPTX, XLSX, HTML, MD, TXT, CSV, JSONL",
    ),
    no_wait: bool = typer.Option(False, "--no-wait", help="Queue the reading and return."),
):
    """Upload documents and read them into the knowledge base (a progress bar each)."""
    failed = 0
    with api() as client:
        for file in files:
            with file.open("rb") as content:
                accepted = client.post(
                    f"{_kb_path(kb)}/documents", files={"file": (file.name, content)}
                )
            if no_wait:
                console.print(f"{file.name}: document {accepted['id']}, job {accepted['job_id']}")
                continue
            try:
                follow_job(client, accepted["job_id"])
            except typer.Exit:
                failed += 1
                continue
            document = client.get(f"{_kb_path(kb)}/documents/{accepted['id']}")
            console.print(
                f"{document['filename']}: {document['pages']} pages, {document['chunks']} chunks"
            )
    if failed:
        raise typer.Exit(1)


@app.command("search")
def search(
    kb: str = typer.Argument(..., help="The knowledge base, by id or name."),
    query: str = typer.Argument(...),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, max=50),
    mode: str = typer.Option("hybrid", help="hybrid, vector or fulltext."),
    rerank: bool = typer.Option(
        True, "--rerank/--no-rerank", help="Let the server's reranker, if any, order them."
    ),
    as_json: bool = JsonOption,
):
    """The passages that answer the query best, with their scores."""
    with api() as client:
        found = client.post(
            f"{_kb_path(kb)}/search",
            {"query": query, "top_k": top_k, "mode": mode, "rerank": rerank},
        )
    if as_json:
        print_json(found)
        return
    if not found["passages"]:
        err_console.print("Nothing found.")
    for n, passage in enumerate(found["passages"], 1):
        scores = ", ".join(
            f"{label} {passage[key]:.3f}"
            for label, key in (
                ("rerank", "rerank_score"),
                ("fused", "score"),
                ("vector", "vector_score"),
                ("bm25", "text_score"),
            )
            if passage[key] is not None
        )
        console.print(
            f"[bold][{n}] {passage['filename']}, {passage['page_label']}[/bold] ({scores})",
            highlight=False,
        )
        console.print(passage["text"], markup=False, highlight=False, soft_wrap=True)
        console.print()


@app.command("evaluate")
def evaluate(
    kb: str = typer.Argument(..., help="The knowledge base, by id or name."),
    dataset: str = typer.Option(..., "--dataset", help="Questions, by dataset id or name."),
    question_column: str = typer.Option("question", "--question-column"),
    expected_column: str = typer.Option("document", "--expected-column"),
    expected: str = typer.Option("document", help="document (a file name) or passage (text)."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, max=50),
    mode: str = typer.Option("hybrid", help="hybrid, vector or fulltext."),
    size: int = typer.Option(100, min=1, max=500, help="How many questions."),
    seed: int | None = typer.Option(None, help="Draw the questions at random with this seed."),
    rerank: bool = typer.Option(
        True, "--rerank/--no-rerank", help="Let the server's reranker, if any, order passages."
    ),
    as_json: bool = JsonOption,
):
    """Retrieval only: hit rate and MRR@k on a dataset of questions with what should be found."""
    body = {
        "dataset_id": dataset,
        "question_column": question_column,
        "expected_column": expected_column,
        "expected": expected,
        "top_k": top_k,
        "mode": mode,
        "size": size,
        "seed": seed,
        "rerank": rerank,
    }
    with api() as client:
        result = client.post(f"{_kb_path(kb)}/evaluate", body)
    if as_json:
        print_json(result)
        return
    misses = [row for row in result["rows"] if row["rank"] is None and not row.get("skipped")]
    print_table(misses[:20], ["record_index", "question", "expected"])
    if not result["questions"]:
        fail(f"No question could be scored: {result['skipped']} had an empty value.")
    console.print(
        f"{result['questions']} questions, k={result['k']} ({result['mode']}"
        + (f", reranked by {result['reranker']}" if result.get("reranker") else "")
        + "): "
        f"hit rate {result['hit_rate']:.3f}, MRR@{result['k']} {result['mrr']:.3f}"
        + (f"; {result['skipped']} skipped" if result["skipped"] else "")
    )


@app.command("ls")
def ls(
    kb: str | None = typer.Argument(None, help="A knowledge base: list its documents instead."),
    as_json: bool = JsonOption,
):
    """List knowledge bases, or one knowledge base's documents."""
    with api() as client:
        if kb is None:
            rows = client.every("/knowledge-bases")
            columns = ["id", "name", "documents", "index"]
            shown = [{**row, "index": _index_line(row["active_index"])} for row in rows]
        else:
            rows = client.every(f"{_kb_path(kb)}/documents")
            columns = ["id", "filename", "status", "pages", "chunks", "error"]
            shown = rows
    if as_json:
        print_json(rows)
    else:
        print_table(shown, columns)


@app.command("show")
def show(kb: str, as_json: bool = JsonOption):
    """A knowledge base: its index version, and the one being built."""
    with api() as client:
        found = client.get(_kb_path(kb))
    print_json(found) if as_json else _show(found)


@app.command("reindex")
def reindex(
    kb: str,
    embedding_model: str | None = typer.Option(None, "--embedding-model", "-e"),
    splitter: str | None = typer.Option(None),
    chunk_size: int | None = typer.Option(None),
    chunk_overlap: int | None = typer.Option(None),
    no_wait: bool = typer.Option(False, "--no-wait"),
):
    """Build a new index version: another embedding model or chunking (the current one answers
    until it is complete)."""
    body: dict = {}
    if embedding_model:
        body["embedding_model"] = embedding_model
    with api() as client:
        if splitter or chunk_size or chunk_overlap is not None:
            current = client.get(_kb_path(kb))["active_index"]
            chunking = dict(current["chunking"]) if current else {}
            for key, value in (
                ("splitter", splitter),
                ("size", chunk_size),
                ("overlap", chunk_overlap),
            ):
                if value is not None:
                    chunking[key] = value
            body["chunking"] = chunking
        accepted = client.post(f"{_kb_path(kb)}/reindex", body)
        if no_wait:
            console.print(
                f"Index version {accepted['id']} is being built by job {accepted['job_id']}."
            )
            return
        follow_job(client, accepted["job_id"])
        _show(client.get(_kb_path(kb)))


@app.command("rm")
def rm(
    kb: str,
    document: str | None = typer.Option(
        None, "--document", help="Remove this document (id or file name) instead of the base."
    ),
):
    """Remove a knowledge base with its documents and index, or one document."""
    with api() as client:
        if document is None:
            client.delete(_kb_path(kb))
            console.print(f"Removed knowledge base {kb}.")
            return
        documents = client.every(f"{_kb_path(kb)}/documents")
        matches = [d for d in documents if document in (d["id"], d["filename"])]
        if len(matches) != 1:
            fail(
                f"No document '{document}' in {kb}."
                if not matches
                else f"{len(matches)} documents are named '{document}'; give the id."
            )
        client.delete(f"{_kb_path(kb)}/documents/{matches[0]['id']}")
        console.print(f"Removed {matches[0]['filename']} from {kb}.")
