"""Knowledge bases through the API: create, ingest real documents with the real demo embedding
model, search, cite, delete, rebuild with other settings, and ground chat in them."""

from __future__ import annotations

import pytest

from tests.helpers import upload as upload_dataset
from tests.helpers import user_in, wait_for_job
from tests.openai_double import OpenAIDouble
from tuneyard.basemodels.service import add_demo_embedding
from tuneyard.db import session_scope
from tuneyard.models import KnowledgeChunk, KnowledgeIndex

API = "/api/v1/knowledge-bases"
pytestmark = pytest.mark.slow  # the embedding model loads in the job and the server

HANDBOOK = b"""# Handbook

## Leave

Every employee gets twenty-five days of paid leave a year. Unused days carry over until March.

## Travel

Trains are booked in second class. Flights need the approval of a director before booking.

## Equipment

Laptops are replaced every four years. A broken screen is repaired by the service desk.
"""
RECIPES = b"""Pancakes need flour, milk, two eggs and a pinch of salt. Rest the batter for an hour.

A good tomato sauce simmers for forty minutes with garlic and olive oil.
"""


@pytest.fixture
def embedding_model(principal) -> str:
    with session_scope() as session:
        return f"base:{add_demo_embedding(session, principal).id}"


@pytest.fixture
def kb(client, auth, embedding_model) -> dict:
    created = client.post(
        API,
        json={
            "name": "handbook",
            "embedding_model": embedding_model,
            "chunking": {"splitter": "markdown", "size": 64, "overlap": 8},
        },
        headers=auth,
    )
    assert created.status_code == 201, created.text
    return created.json()


def upload(client, auth, kb_ref: str, filename: str, content: bytes) -> dict:
    accepted = client.post(
        f"{API}/{kb_ref}/documents", files={"file": (filename, content)}, headers=auth
    )
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(accepted.json()["job_id"])
    document = client.get(f"{API}/{kb_ref}/documents/{accepted.json()['id']}", headers=auth)
    return {**document.json(), "job_status": job.status, "job_error": job.error}


def search(client, auth, kb_ref: str, query: str, **body) -> list[dict]:
    found = client.post(f"{API}/{kb_ref}/search", json={"query": query, **body}, headers=auth)
    assert found.status_code == 200, found.text
    return found.json()["passages"]


class TestKnowledgeBases:
    def test_a_new_base_has_an_empty_active_index(self, kb, embedding_model):
        index = kb["active_index"]
        assert (index["version"], index["state"], index["documents"]) == (1, "active", 0)
        assert index["embedding_model"] == embedding_model
        assert index["embedding_name"] == "all-MiniLM-L6-v2"
        assert index["chunking"] == {"splitter": "markdown", "size": 64, "overlap": 8}
        assert kb["building_index"] is None

    def test_refuses_what_cannot_embed_or_chunk(self, client, auth, embedding_model, tiny_base):
        def create(**body):
            body = {"name": "x", "embedding_model": embedding_model, **body}
            return client.post(API, json=body, headers=auth)

        chat_model = create(embedding_model=f"base:{tiny_base}")
        assert chat_model.status_code == 422
        assert "cannot embed text" in chat_model.json()["detail"]
        assert create(embedding_model="base:nope").status_code == 404
        overlap = create(chunking={"size": 64, "overlap": 60})
        assert overlap.status_code == 422
        assert "overlap" in overlap.text
        assert create(chunking={"splitter": "sentences"}).status_code == 422

    def test_names_are_unique_in_a_project(self, client, auth, kb, embedding_model):
        again = client.post(
            API, json={"name": "handbook", "embedding_model": embedding_model}, headers=auth
        )
        assert again.status_code == 409
        assert "already exists" in again.json()["detail"]

    def test_another_project_cannot_see_it_and_a_viewer_cannot_change_it(self, client, kb):
        stranger = user_in(client, "2002", "eve")
        assert client.get(f"{API}/{kb['id']}", headers=stranger).status_code == 404
        found = client.post(f"{API}/{kb['id']}/search", json={"query": "x"}, headers=stranger)
        assert found.status_code == 404
        viewer = user_in(client, "1001", "vic", role="viewer")
        assert client.get(f"{API}/handbook", headers=viewer).status_code == 200
        assert search(client, viewer, "handbook", "leave") == []
        assert client.delete(f"{API}/handbook", headers=viewer).status_code == 403


class TestDocuments:
    def test_ingest_search_cite_evaluate_and_delete(self, client, auth, kb, worker):
        document = upload(client, auth, "handbook", "handbook.md", HANDBOOK)
        assert document["job_status"] == "succeeded", document["job_error"]
        assert document["status"] == "ready" and document["chunks"] >= 3
        upload(client, auth, "handbook", "recipes.txt", RECIPES)

        passages = search(client, auth, "handbook", "How many days of paid leave?", top_k=3)
        best = passages[0]
        assert best["filename"] == "handbook.md"
        assert "twenty-five days of paid leave" in best["text"]
        assert best["heading"] and "Leave" in best["heading"]
        assert best["vector_score"] is not None and best["text_score"] is not None
        assert best["score"] >= passages[-1]["score"]
        # The citation is the exact span of the document's text.
        window = client.get(
            f"{API}/handbook/documents/{best['document_id']}/text",
            params={"start": best["start"], "end": best["end"]},
            headers=auth,
        ).json()
        assert window["text"] == best["text"]

        fulltext = search(client, auth, "handbook", "tomato sauce garlic", mode="fulltext")
        assert fulltext[0]["filename"] == "recipes.txt"
        assert fulltext[0]["vector_score"] is None
        only = search(
            client, auth, "handbook", "leave", document_ids=[best["document_id"]], top_k=10
        )
        assert {p["filename"] for p in only} == {"handbook.md"}

        kb_now = client.get(f"{API}/handbook", headers=auth).json()
        assert kb_now["active_index"]["dimensions"] == 384
        assert kb_now["active_index"]["documents"] == 2

        questions = upload_dataset(
            client,
            auth,
            "questions",
            [
                {
                    "prompt": "How many days of paid leave do employees get?",
                    "answer": "handbook.md",
                },
                {"prompt": "How long does the tomato sauce simmer?", "answer": "recipes.txt"},
                {"prompt": "Which class are trains booked in?", "answer": "handbook.md"},
                {"prompt": "What is the tallest mountain of Peru?", "answer": "atlas.pdf"},
            ],
        )
        body = {"dataset_id": questions, "question_column": "prompt", "expected_column": "answer"}
        result = client.post(f"{API}/handbook/evaluate", json={**body, "top_k": 2}, headers=auth)
        assert result.status_code == 200, result.text
        scored = result.json()
        assert (scored["questions"], scored["k"]) == (4, 2)
        ranks = [row["rank"] for row in scored["rows"]]
        assert ranks[3] is None  # no such document
        assert all(rank is not None for rank in ranks[:3])
        assert scored["hit_rate"] == 0.75
        assert scored["mrr"] == pytest.approx(sum(1 / r for r in ranks[:3]) / 4)

        wrong = client.post(
            f"{API}/handbook/evaluate", json={**body, "expected_column": "doc"}, headers=auth
        )
        assert wrong.status_code == 422
        assert "'doc' is not a column" in wrong.json()["detail"]

        again = client.post(
            f"{API}/handbook/documents", files={"file": ("copy.md", HANDBOOK)}, headers=auth
        )
        assert again.status_code == 409
        assert "already has this file, as 'handbook.md'" in again.json()["detail"]

        recipes = fulltext[0]["document_id"]
        removed = client.delete(f"{API}/handbook/documents/{recipes}", headers=auth)
        assert removed.status_code == 204
        assert search(client, auth, "handbook", "tomato sauce garlic", mode="fulltext") == []
        with session_scope() as session:
            assert session.query(KnowledgeChunk).filter_by(document_id=recipes).count() == 0

    def test_unreadable_and_unsupported_files(self, client, auth, kb, worker):
        broken = upload(client, auth, "handbook", "broken.pdf", b"%PDF-1.4 not really a pdf")
        assert broken["status"] == "failed" and broken["job_status"] == "failed"
        assert broken["error"]
        exe = client.post(
            f"{API}/handbook/documents", files={"file": ("tool.exe", b"MZ")}, headers=auth
        )
        assert exe.status_code == 422
        assert ".pdf" in exe.json()["detail"]
        empty = client.post(
            f"{API}/handbook/documents", files={"file": ("empty.md", b"")}, headers=auth
        )
        assert empty.status_code == 422


class TestReindex:
    def test_new_chunking_builds_a_new_version_and_drops_the_old(
        self, client, auth, kb, worker, data_dir
    ):
        upload(client, auth, "handbook", "handbook.md", HANDBOOK)
        before = client.get(f"{API}/handbook", headers=auth).json()["active_index"]
        accepted = client.post(
            f"{API}/handbook/reindex",
            json={"chunking": {"splitter": "recursive", "size": 512, "overlap": 0}},
            headers=auth,
        )
        assert accepted.status_code == 202, accepted.text
        assert wait_for_job(accepted.json()["job_id"]).status == "succeeded"
        after = client.get(f"{API}/handbook", headers=auth).json()["active_index"]
        assert (after["version"], after["id"]) == (2, accepted.json()["id"])
        assert after["chunking"]["size"] == 512 and after["documents"] == 1
        assert after["chunks"] < before["chunks"]  # bigger chunks, fewer of them
        assert not (data_dir / "knowledge" / kb["id"] / "indexes" / before["id"]).exists()
        with session_scope() as session:
            assert session.get(KnowledgeIndex, before["id"]) is None
        assert search(client, auth, "handbook", "paid leave")[0]["filename"] == "handbook.md"

        assert client.delete(f"{API}/handbook", headers=auth).status_code == 204
        assert not (data_dir / "knowledge" / kb["id"]).exists()
        assert client.get(f"{API}/handbook", headers=auth).status_code == 404

    def test_one_build_at_a_time(self, client, auth, kb):
        first = client.post(f"{API}/handbook/reindex", json={}, headers=auth)
        assert first.status_code == 202
        second = client.post(f"{API}/handbook/reindex", json={}, headers=auth)
        assert second.status_code == 409
        assert "being built" in second.json()["detail"]


class TestGroundedChat:
    def test_chat_gateway_and_assessment_are_grounded(self, client, auth, kb, worker):
        upload(client, auth, "handbook", "handbook.md", HANDBOOK)
        questions = upload_dataset(
            client,
            auth,
            "asked",
            [{"prompt": "How many days of paid leave?", "answer": "twenty-five"}],
        )

        def script(messages):
            grounded = messages[0]["role"] == "system" and "Sources:" in messages[0]["content"]
            return "You get twenty-five days [1]." if grounded else "I do not know."

        with OpenAIDouble(script) as double:
            entry = client.post(
                "/api/v1/third-party-models",
                json={
                    "name": "helper",
                    "provider": "openai-compatible",
                    "model_name": "scripted",
                    "base_url": double.url,
                },
                headers=auth,
            )
            assert entry.status_code == 201, entry.text
            answer = client.post(
                "/api/v1/chat",
                json={
                    "model": "third-party:helper",
                    "messages": [{"role": "user", "content": "How many days of paid leave?"}],
                    "stream": False,
                    "knowledge_bases": ["handbook"],
                    "grounding": {"top_k": 2},
                },
                headers=auth,
            )
            assert answer.status_code == 200, answer.text
            citations = answer.json()["citations"]
            assert len(citations) == 2
            first = citations[0]
            assert (first["n"], first["filename"], first["cited"]) == (1, "handbook.md", True)
            assert citations[1]["cited"] is False
            system = double.requests[-1]["messages"][0]
            assert system["role"] == "system"
            assert "[1] handbook.md" in system["content"]
            assert "twenty-five days of paid leave" in system["content"]

            stored = client.get(
                f"/api/v1/chat/sessions/{answer.json()['session_id']}", headers=auth
            ).json()
            assert stored["messages"][-1]["citations"][0]["chunk_id"] == first["chunk_id"]

            gateway = client.post(
                "/v1/chat/completions",
                json={
                    "model": "third-party:helper",
                    "messages": [{"role": "user", "content": "Who approves flights?"}],
                    "knowledge_bases": ["handbook"],
                },
                headers=auth,
            )
            assert gateway.status_code == 200, gateway.text
            assert gateway.json()["citations"][0]["filename"] == "handbook.md"
            assert "approval of a director" in double.requests[-1]["messages"][0]["content"]

            # An assessment compares a retrieval-augmented candidate with the plain model.
            candidate = {"model": "third-party:helper", "prompt": "{{prompt}}"}
            created = client.post(
                "/api/v1/assessments",
                json={
                    "name": "rag",
                    "dataset_id": questions,
                    "sample": {"size": 1},
                    "candidates": [
                        {**candidate, "knowledge_bases": ["handbook"], "grounding": {"top_k": 1}},
                        candidate,
                    ],
                    "reference_column": "answer",
                    "metrics": ["contains"],
                },
                headers=auth,
            )
            assert created.status_code == 202, created.text
            assert wait_for_job(created.json()["job_id"]).status == "succeeded"
        row = client.get(
            f"/api/v1/assessments/{created.json()['id']}/results", headers=auth
        ).json()["items"][0]
        grounded, plain = row["answers"]
        assert grounded["text"] == "You get twenty-five days [1]."
        assert grounded["citations"][0]["filename"] == "handbook.md"
        assert plain["text"] == "I do not know." and "citations" not in plain
        assert [m["contains"] for m in row["metrics"]] == [1.0, 0.0]

    @pytest.mark.backend_free
    def test_a_real_tiny_model_answers_grounded_with_its_sources(
        self, client, auth, kb, worker, tiny_base
    ):
        upload(client, auth, "handbook", "handbook.md", HANDBOOK)
        answer = client.post(
            "/api/v1/chat",
            json={
                "model": f"base:{tiny_base}",
                "messages": [{"role": "user", "content": "Who approves flights?"}],
                "params": {"temperature": 0, "max_tokens": 8},
                "stream": False,
                "knowledge_bases": [kb["id"]],
                "grounding": {"top_k": 2},
            },
            headers=auth,
        )
        assert answer.status_code == 200, answer.text
        grounded = answer.json()
        assert grounded["usage"]["prompt_tokens"] > 40  # the sources went into the prompt
        citations = grounded["citations"]
        assert [c["n"] for c in citations] == [1, 2]
        assert "approval of a director" in citations[0]["text"]
        assert all(c["cited"] is False for c in citations)  # random weights cite nothing

    def test_an_unknown_knowledge_base_is_refused_before_the_model_is_asked(
        self, client, auth, tiny_base
    ):
        answer = client.post(
            "/api/v1/chat",
            json={
                "model": f"base:{tiny_base}",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": False,
                "knowledge_bases": ["missing"],
            },
            headers=auth,
        )
        assert answer.status_code == 404
        assert "No knowledge base 'missing'" in answer.json()["detail"]
        sessions = client.get("/api/v1/chat/sessions", headers=auth).json()
        assert sessions["total"] == 0  # nothing was stored for a refused turn
