"""The reranker after fusion: a rerank endpoint (a real HTTP server scoring by a scripted rule)
reorders search, grounding and evaluation; a failing one is a 503 naming it; `rerank: false`
skips it; settings that cannot work are refused at load; a cross-encoder folder loads and
scores."""

from __future__ import annotations

import json
import math
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from tests.helpers import wait_for_job
from tests.http_double import BackgroundServer
from tests.openai_double import OpenAIDouble, Reply
from tuneyard.config import Settings, reset_settings
from tuneyard.db import session_scope
from tuneyard.errors import Unavailable
from tuneyard.knowledge import rerank
from tuneyard.knowledge.retrieval import retrieve

API = "/api/v1/knowledge-bases"
KEY = "sk-rerank-secret"

HANDBOOK = b"""# Handbook

## Leave

Every employee gets twenty-five days of paid leave a year. Unused days carry over until March.

## Travel

Trains are booked in second class. Flights need the approval of a director before booking.

## Equipment

Laptops are replaced every four years. A broken screen is repaired by the service desk.

## Canteen

The canteen serves tomato soup on Mondays and a tomato salad on Fridays.
"""

# What the endpoint answers for one request: the relevance of each document, or an error, or
# a raw body (a server that answers something else).
Rule = Callable[[str, list[str]], "list[float] | Reply | bytes"]


def tomatoes(query: str, documents: list[str]) -> list[float]:
    """The scripted relevance: how often a document says "tomato", whatever was asked."""
    return [float(document.lower().count("tomato")) for document in documents]


class RerankDouble:
    """A rerank endpoint (Cohere's, Jina's and vLLM's shape) on 127.0.0.1 and a free port:
    `POST /v1/rerank`, the results best first and cut to `top_n`, as those servers answer.
    `requests` holds each body with its Authorization header."""

    def __init__(self, rule: Rule = tomatoes):
        self.rule = rule
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._background: BackgroundServer | None = None

    @property
    def url(self) -> str:
        assert self._background is not None
        return f"{self._background.url}/v1/rerank"

    def __enter__(self) -> RerankDouble:
        self._background = BackgroundServer(self._app(), "rerank double")
        self._background.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._background is not None:
            self._background.stop()

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/rerank")
        async def rerank_documents(request: Request):
            body = await request.json()
            with self._lock:
                self.requests.append(
                    {**body, "authorization": request.headers.get("authorization")}
                )
            answer = self.rule(body["query"], body["documents"])
            if isinstance(answer, bytes):
                return Response(answer, media_type="application/json")
            if isinstance(answer, Reply):
                headers = {}
                if answer.retry_after is not None:
                    headers["Retry-After"] = f"{answer.retry_after:g}"
                return JSONResponse({"error": answer.text}, answer.status, headers=headers)
            results = sorted(
                ({"index": i, "relevance_score": score} for i, score in enumerate(answer)),
                key=lambda result: result["relevance_score"],
                reverse=True,
            )
            return {"model": body["model"], "results": results[: body.get("top_n")]}

        return app


def use_reranker(monkeypatch, value: str | None, model: str | None = None, key: str | None = None):
    for name, setting in (
        ("TUNEYARD_RERANKER", value),
        ("TUNEYARD_RERANKER_MODEL", model),
        ("TUNEYARD_RERANKER_API_KEY", key),
    ):
        if setting is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, setting)
    reset_settings()


@pytest.fixture
def embedder():
    """An embedding endpoint (hashed vectors: fast, and unrelated to meaning)."""
    with OpenAIDouble() as double:
        yield double


@pytest.fixture
def handbook(client, auth, embedder, worker) -> dict:
    """A knowledge base with the handbook in it, one chunk per section."""
    entry = client.post(
        "/api/v1/third-party-models",
        json={
            "name": "hashed",
            "provider": "openai-compatible",
            "model_name": "hashed",
            "model_type": "embedding",
            "base_url": embedder.url,
        },
        headers=auth,
    )
    assert entry.status_code == 201, entry.text
    created = client.post(
        API,
        json={
            "name": "handbook",
            "embedding_model": "third-party:hashed",
            "chunking": {"splitter": "markdown", "size": 64, "overlap": 0},
        },
        headers=auth,
    )
    assert created.status_code == 201, created.text
    accepted = client.post(
        f"{API}/handbook/documents", files={"file": ("handbook.md", HANDBOOK)}, headers=auth
    )
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(accepted.json()["job_id"])
    assert job.status == "succeeded", job.error
    return client.get(f"{API}/handbook", headers=auth).json()


def search(client, auth, query: str, **body) -> dict:
    found = client.post(f"{API}/handbook/search", json={"query": query, **body}, headers=auth)
    assert found.status_code == 200, found.text
    return found.json()


class TestEndpointReranker:
    def test_the_reranker_orders_what_fusion_found(
        self, client, auth, principal, handbook, monkeypatch
    ):
        fused = search(client, auth, "How many days of paid leave?", top_k=2)
        assert fused["reranker"] is None
        assert [p["rerank_score"] for p in fused["passages"]] == [None, None]
        assert "paid leave" in fused["passages"][0]["text"]
        assert all("tomato" not in p["text"] for p in fused["passages"])

        with RerankDouble() as double:
            use_reranker(monkeypatch, double.url, "rerank-v3.5", KEY)
            reranked = search(client, auth, "How many days of paid leave?", top_k=2)

            # The endpoint read 3 * top_k fused candidates (all the handbook's chunks, fewer
            # than that), in fused order, with the configured model and key.
            sent = double.requests[-1]
            assert sent["query"] == "How many days of paid leave?"
            assert sent["model"] == "rerank-v3.5"
            assert sent["authorization"] == f"Bearer {KEY}"
            chunks = handbook["active_index"]["chunks"]
            assert chunks < 6
            assert len(sent["documents"]) == sent["top_n"] == chunks
            assert sent["documents"][:2] == [p["text"] for p in fused["passages"]]

            assert reranked["reranker"] == "rerank-v3.5"
            first, second = reranked["passages"]
            # The canteen's chunk, which fusion left out of the top 2, now leads.
            assert "tomato soup" in first["text"]
            assert first["rerank_score"] == 2.0
            assert first["score"] > 0 and first["heading"] == "Handbook > Canteen"
            # Ties keep the fused order: the best fused passage comes next.
            assert second["chunk_id"] == fused["passages"][0]["chunk_id"]
            assert second["rerank_score"] == 0.0

            asked = len(double.requests)
            skipped = search(client, auth, "How many days of paid leave?", top_k=2, rerank=False)
            assert skipped == fused
            assert len(double.requests) == asked

            # Grounded chat retrieves through the same reranker.
            with session_scope() as session:
                grounding = retrieve(session, principal, ["handbook"], "paid leave?", top_k=2)
            assert "tomato soup" in grounding[0]["text"]
            assert [p["rerank_score"] for p in grounding] == [2.0, 0.0]

    def test_the_cli_shows_the_rerank_score_and_can_skip_it(self, cli, handbook, monkeypatch):
        from typer.testing import CliRunner

        from tuneyard.cli import app

        runner = CliRunner()
        with RerankDouble() as double:
            use_reranker(monkeypatch, double.url, "rerank-v3.5")
            shown = runner.invoke(app, ["kb", "search", "handbook", "paid leave?", "-k", "2"])
            assert shown.exit_code == 0, shown.output
            first, second = shown.stdout.split("[2] ")
            assert "[1] handbook.md, text (rerank 2.000, fused " in first
            assert "tomato soup" in first
            assert "(rerank 0.000, fused " in second and "paid leave a year" in second
            plain = runner.invoke(
                app, ["kb", "search", "handbook", "paid leave?", "-k", "2", "--no-rerank"]
            )
            assert plain.exit_code == 0, plain.output
            assert "rerank" not in plain.stdout and "tomato" not in plain.stdout
            double.rule = lambda query, documents: Reply("down", 401)
            failed = runner.invoke(app, ["kb", "search", "handbook", "paid leave?"])
            assert failed.exit_code != 0
            assert f"The rerank endpoint {double.url} refused the API key" in failed.output

    def test_a_failing_reranker_is_an_error_naming_it(self, client, auth, handbook, monkeypatch):
        with RerankDouble(lambda query, documents: Reply("overloaded", 503, 0)) as double:
            use_reranker(monkeypatch, double.url, "rerank-v3.5", KEY)
            busy = client.post(f"{API}/handbook/search", json={"query": "leave"}, headers=auth)
            assert busy.status_code == 503
            detail = busy.json()["detail"]
            assert f"The rerank endpoint {double.url} failed (503): overloaded" in detail
            assert "gave up after 3 attempts" in detail
            assert len(double.requests) == 3  # retried, then given up

            double.rule = lambda query, documents: Reply(f"bad key {KEY}", 401)
            refused = client.post(f"{API}/handbook/search", json={"query": "leave"}, headers=auth)
            assert refused.status_code == 503
            assert "refused the API key (401)" in refused.json()["detail"]
            assert "TUNEYARD_RERANKER_API_KEY" in refused.json()["detail"]

            double.rule = lambda query, documents: Reply(f"unknown model, key {KEY}", 400)
            unknown = client.post(f"{API}/handbook/search", json={"query": "leave"}, headers=auth)
            assert unknown.status_code == 503
            assert "refused the request (400) for model rerank-v3.5" in unknown.text
            assert KEY not in unknown.text and "***" in unknown.text

            double.rule = lambda query, documents: tomatoes(query, documents)[:1]
            partial = client.post(f"{API}/handbook/search", json={"query": "leave"}, headers=auth)
            assert partial.status_code == 503
            chunks = handbook["active_index"]["chunks"]
            assert f"scored 1 of the {chunks} documents sent" in partial.json()["detail"]

            # With rerank off, search answers as if none were configured.
            plain = search(client, auth, "leave", rerank=False)
            assert plain["reranker"] is None and plain["passages"]

        gone = client.post(f"{API}/handbook/search", json={"query": "leave"}, headers=auth)
        assert gone.status_code == 503
        assert f"Cannot reach the rerank endpoint {double.url}" in gone.json()["detail"]


@pytest.mark.nodb
class TestEndpointAnswers:
    """What an endpoint may answer, through the reranker alone."""

    def rerank(self, answer: bytes) -> list[float]:
        with RerankDouble(lambda query, documents: answer) as double:
            return rerank.EndpointReranker(double.url, "m").rerank("q", ["a", "b"])

    def test_results_come_back_in_the_documents_order(self):
        body = {
            "results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": -2}]
        }
        assert self.rerank(json.dumps(body).encode()) == [-2.0, 0.9]

    @pytest.mark.parametrize(
        ("answer", "message"),
        [
            (b'{"data": []}', "not with rerank results"),
            (b"<html>", "not with rerank results"),
            (b'{"results": [{"index": 0, "relevance_score": 1}]}', "scored 1 of the 2"),
            (b'{"results": [{"index": 5, "relevance_score": 1}]}', "result for document 5"),
            (
                b'{"results": [{"index": 0, "relevance_score": 1}, '
                b'{"index": 0, "relevance_score": 2}]}',
                "result for document 0",
            ),
            (
                b'{"results": [{"index": 0, "relevance_score": "high"}, '
                b'{"index": 1, "relevance_score": 1}]}',
                "not a number",
            ),
            (
                b'{"results": [{"index": 0, "relevance_score": 1e400}, '
                b'{"index": 1, "relevance_score": 1}]}',
                "NaN or infinite",
            ),
        ],
    )
    def test_what_is_not_one_score_per_document_is_refused(self, answer: bytes, message: str):
        with pytest.raises(Unavailable, match=message):
            self.rerank(answer)

    def test_too_many_passages_are_refused_before_any_call(self):
        reranker = rerank.EndpointReranker("http://127.0.0.1:9/rerank", "m")
        with pytest.raises(Exception, match=f"at most {rerank.MAX_TEXTS} passages"):
            reranker.rerank("q", ["x"] * (rerank.MAX_TEXTS + 1))


@pytest.mark.nodb
class TestSettings:
    def settings(self, **values: str) -> Settings:
        """Settings of these values alone (no environment, no .env file)."""
        return Settings.model_validate(values)

    def test_none_by_default_and_a_blank_value_is_none(self):
        assert self.settings().reranker is None
        assert self.settings(reranker="  ").reranker is None

    @pytest.mark.parametrize(
        ("values", "message"),
        [
            ({"reranker": "ftp://example.com/rerank"}, "neither an http(s) URL"),
            ({"reranker": "http://"}, "cannot be called: it has no host"),
            ({"reranker": "http://example.com/rerank"}, "set TUNEYARD_RERANKER_MODEL"),
            (
                {
                    "reranker": "http://example.com/rerank",
                    "reranker_model": "m",
                    "reranker_api_key": "a b",
                },
                "TUNEYARD_RERANKER_API_KEY cannot be sent",
            ),
            ({"reranker": "/no/such/folder"}, "/no/such/folder is not a folder on this server"),
            ({"reranker_model": "m"}, "set TUNEYARD_RERANKER to its URL"),
        ],
    )
    def test_settings_that_cannot_work_are_refused(self, values, message):
        with pytest.raises(ValidationError, match=re.escape(message)) as refused:
            self.settings(**values)
        assert "a b" not in str(refused.value)  # values are not echoed: keys hide there

    def test_a_folder_that_is_not_a_cross_encoder_is_refused(self, tmp_path):
        with pytest.raises(ValidationError, match="it has no config.json"):
            self.settings(reranker=str(tmp_path))
        (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
        with pytest.raises(ValidationError, match="holds a BertModel, not a cross-encoder"):
            self.settings(reranker=str(tmp_path))
        with pytest.raises(ValidationError, match="a model folder, which has no model name"):
            self.settings(reranker=str(tmp_path), reranker_model="m")

    def test_an_endpoint_and_a_folder_are_accepted(self, tmp_path):
        endpoint = self.settings(reranker="https://api.example.com/v2/rerank", reranker_model="m")
        assert endpoint.reranker == "https://api.example.com/v2/rerank"
        (tmp_path / "config.json").write_text(
            '{"architectures": ["BertForSequenceClassification"]}'
        )
        assert self.settings(reranker=str(tmp_path)).reranker == str(tmp_path)


def tiny_cross_encoder(folder: Path) -> Path:
    """A random 2-layer BERT scoring a (query, passage) pair with one label, and the demo
    embedding model's BERT tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    from tuneyard.basemodels.service import demo_embedding_folder

    source = demo_embedding_folder()
    folder.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    config.num_labels = 1  # one relevance score per (query, passage) pair
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.mark.slow  # builds and loads a model
@pytest.mark.nodb
def test_a_cross_encoder_folder_scores_each_passage(monkeypatch, tmp_path):
    folder = tiny_cross_encoder(tmp_path / "tiny-reranker")
    use_reranker(monkeypatch, str(folder))
    reranker = rerank.reranker()
    assert isinstance(reranker, rerank.CrossEncoderReranker)
    assert reranker.name == "tiny-reranker"
    assert rerank.reranker() is reranker  # loaded once per process
    texts = ["Twenty-five days of paid leave.", "Tomato soup on Mondays.", "x" * 100_000, ""]
    scores = reranker.rerank("How many days of leave?", texts)
    assert len(scores) == len(texts)
    assert all(isinstance(score, float) and math.isfinite(score) for score in scores)
    assert reranker.rerank("anything", []) == []
