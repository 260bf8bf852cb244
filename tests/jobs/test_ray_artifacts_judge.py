"""Assessments and knowledge bases on a Ray cluster whose nodes share no disk with the API: an S3
store (moto's server) carries their datasets, documents and index versions. What a job did on
its node is what the API shows once the job succeeded: the same assessment results as a local
run, documents searchable and cited from the API's data dir."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import select

from tests.helpers import SUMS, number, scripted_pairwise, upload, wait_for_job
from tests.jobs import test_ray_artifacts as through_store
from tests.openai_double import OpenAIDouble, last_user
from tuneyard.db import session_scope
from tuneyard.jobs.executor import Executor
from tuneyard.models import BaseModel, Job, KnowledgeDocument

pytestmark = [pytest.mark.backend_free, pytest.mark.slow]

# The store, the node's data dir and a worker using them, as for the other jobs through it.
s3_endpoint = through_store.s3_endpoint
node_dir = through_store.node_dir
store_settings = through_store.store_settings
store_worker = through_store.store_worker

ASSESSMENTS = "/api/v1/assessments"
KNOWLEDGE = "/api/v1/knowledge-bases"
JUDGE_KEY = "judge-key-kept-encrypted-5150"
EMBEDDER_KEY = "embedder-key-kept-encrypted-6160"
PAIRWISE_PROMPT = "Question: {{Question}}\n[A] {{ResponseA}}\n[B] {{ResponseB}}"

HANDBOOK = b"""# Handbook

## Leave

Every employee gets twenty-five days of paid leave a year. Unused days carry over until March.

## Travel

Trains are booked in second class. Flights need the approval of a director before booking.
"""
RECIPES = b"""Pancakes need flour, milk, two eggs and a pinch of salt. Rest the batter for an hour.

A good tomato sauce simmers for forty minutes with garlic and olive oil.
"""


def third_party(client, auth, name: str, double: OpenAIDouble, **fields) -> str:
    response = client.post(
        "/api/v1/third-party-models",
        json={
            "name": name,
            "provider": "openai-compatible",
            "model_name": double.model,
            "base_url": double.url,
            **fields,
        },
        headers=auth,
    )
    assert response.status_code == 201, response.text
    return f"third-party:{response.json()['id']}"


def results(client, auth, assessment_id: str) -> dict:
    """What a user compares between two runs: each row's answers and verdict, and the figures
    (without the seconds each call took)."""
    assessment = client.get(f"{ASSESSMENTS}/{assessment_id}", headers=auth).json()
    rows = client.get(f"{ASSESSMENTS}/{assessment_id}/results?limit=500", headers=auth).json()
    summary = assessment["summary"]
    return {
        "status": assessment["status"],
        "rows": {
            row["record_index"]: (
                row["status"],
                [answer["text"] for answer in row["answers"]],
                sorted((j["order"], j["raw"]) for j in row["judgments"]),
                row["verdict"],
            )
            for row in rows["items"]
        },
        "counts": summary["rows"],
        "judge": summary["judge"],
        "agreement": summary["agreement"],
        "answered": [(c["answered"], c["errors"]) for c in summary["candidates"]],
    }


class TestAssessment:
    def test_an_assessment_on_a_node_has_the_results_of_a_local_run(
        self, client, auth, store_worker, node_dir
    ):
        # Parsed on the node; the assessment's node fetches it from the store.
        dataset_id = upload(client, auth, "qa", SUMS)
        with (
            OpenAIDouble(lambda m: f"alpha {number(last_user(m))}") as alpha,
            OpenAIDouble(lambda m: f"beta {number(last_user(m))}") as beta,
            OpenAIDouble(scripted_pairwise) as judge,
        ):
            request = {
                "dataset_id": dataset_id,
                "sample": {"size": len(SUMS), "seed": 4},
                "candidates": [
                    {"model": third_party(client, auth, "alpha", alpha), "prompt": "{{prompt}}"},
                    {"model": third_party(client, auth, "beta", beta), "prompt": "{{prompt}}"},
                ],
                # Its key is stored encrypted: the node's job decrypts it to call the judge.
                "judge": {
                    "model": third_party(client, auth, "judge", judge, api_key=JUDGE_KEY),
                    "kind": "pairwise",
                    "prompt": PAIRWISE_PROMPT,
                },
            }
            accepted = client.post(ASSESSMENTS, json={**request, "name": "on-node"}, headers=auth)
            assert accepted.status_code == 202, accepted.text
            job = wait_for_job(accepted.json()["job_id"])
            assert job.status == "succeeded", job.error
            assert job.node is not None and job.resources is not None
            on_node = accepted.json()["id"]
            assert (node_dir / "datasets" / dataset_id / "records.jsonl").is_file()

            # The same assessment, run by a local worker on the API's machine.
            store_worker.stop()
            accepted = client.post(ASSESSMENTS, json={**request, "name": "local"}, headers=auth)
            assert accepted.status_code == 202, accepted.text
            local = Executor()
            try:
                job = local.run_until_finished(accepted.json()["job_id"])
            finally:
                local.stop()
            assert job.status == "succeeded", job.error
            assert job.node is None
            assert len(judge.requests) == 2 * 2 * len(SUMS)  # each row twice, in each run
        on_node_results = results(client, auth, on_node)
        assert on_node_results == results(client, auth, accepted.json()["id"])
        assert on_node_results["status"] == "succeeded"
        assert on_node_results["counts"] == {"total": 8, "done": 8, "error": 0, "pending": 0}
        assert on_node_results["judge"]["wins"] == {"A": 4, "B": 1, "tie": 2}
        with session_scope() as session:
            node_job = session.scalar(
                select(Job.id).where(Job.kind == "assessment.run", Job.node.is_not(None))
            )
        logs = client.get(f"/api/v1/jobs/{node_job}/logs", headers=auth).text
        assert "job succeeded" in logs
        assert JUDGE_KEY not in logs
        through_store.shows_no_secret(client, auth, node_job)

    def test_a_local_model_is_read_from_the_node_copy_of_its_folder(
        self, client, auth, tiny_base, tiny_model_dir, store_worker, data_dir, node_dir
    ):
        from tuneyard.config import Settings
        from tuneyard.inference.process import stop_inference

        # The base model as a download keeps it: in the API's data dir, which the node lacks.
        home = data_dir / "models" / "base" / tiny_base
        shutil.copytree(tiny_model_dir, home)
        with session_scope() as session:
            session.get_one(BaseModel, tiny_base).path = str(home)
        dataset_id = upload(client, auth, "qa", SUMS)
        request = {
            "name": "tiny",
            "dataset_id": dataset_id,
            "sample": {"size": 2},
            "candidates": [
                {"model": f"base:{tiny_base}", "prompt": "{{prompt}}", "params": {"max_tokens": 4}}
            ],
        }
        accepted = client.post(ASSESSMENTS, json=request, headers=auth)
        assert accepted.status_code == 202, accepted.text
        try:
            job = wait_for_job(accepted.json()["job_id"], timeout=180)
        finally:
            # The node's inference process, which the job started in the node's data dir.
            stop_inference(Settings(data_dir=node_dir))
        assert job.status == "succeeded", job.error
        assert job.node is not None
        rows = client.get(f"{ASSESSMENTS}/{accepted.json()['id']}/results", headers=auth).json()
        answers = [row["answers"][0] for row in rows["items"]]
        assert len(answers) == 2
        assert all(a["error"] is None and a["completion_tokens"] >= 1 for a in answers)
        assert (node_dir / "models" / "base" / tiny_base / "config.json").is_file()


def search(client, auth, kb_id: str, query: str, **body) -> list[dict]:
    found = client.post(f"{KNOWLEDGE}/{kb_id}/search", json={"query": query, **body}, headers=auth)
    assert found.status_code == 200, found.text
    return found.json()["passages"]


@pytest.fixture
def embedder():
    """An OpenAI-compatible embedding endpoint: the same text, the same vector."""
    with OpenAIDouble() as double:
        yield double


class TestKnowledge:
    def test_documents_embedded_on_a_node_are_searched_and_cited_from_the_api(
        self, client, auth, store_worker, data_dir, node_dir, embedder
    ):
        # An embedding endpoint with a stored key: the node's jobs decrypt it to call it.
        embedding = third_party(
            client, auth, "embedder", embedder, model_type="embedding", api_key=EMBEDDER_KEY
        )
        created = client.post(
            KNOWLEDGE,
            json={
                "name": "handbook",
                "embedding_model": embedding,
                "chunking": {"splitter": "markdown", "size": 64, "overlap": 8},
            },
            headers=auth,
        )
        assert created.status_code == 201, created.text
        kb_id = created.json()["id"]
        first_version = created.json()["active_index"]["id"]
        # One upload after the other: the second is saved in the API's data dir while the
        # first one's job may be embedding on its node; neither replaces the other.
        accepted = [
            client.post(
                f"{KNOWLEDGE}/{kb_id}/documents", files={"file": (name, content)}, headers=auth
            )
            for name, content in (("handbook.md", HANDBOOK), ("recipes.txt", RECIPES))
        ]
        for response in accepted:
            assert response.status_code == 202, response.text
            job = wait_for_job(response.json()["job_id"])
            assert job.status == "succeeded", job.error
            assert job.node is not None
        with session_scope() as session:
            statuses = session.scalars(select(KnowledgeDocument.status)).all()
        assert statuses == ["ready", "ready"]

        # Full text: the endpoint's vectors are hashes of the text, not of its meaning.
        passages = search(client, auth, kb_id, "days of paid leave", mode="fulltext")
        best = passages[0]
        assert best["filename"] == "handbook.md"
        assert "twenty-five days of paid leave" in best["text"]
        # The citation is read from the document's text, which came home with it.
        window = client.get(
            f"{KNOWLEDGE}/{kb_id}/documents/{best['document_id']}/text",
            params={"start": best["start"], "end": best["end"]},
            headers=auth,
        )
        assert window.status_code == 200, window.text
        assert window.json()["text"] == best["text"]
        fulltext = search(client, auth, kb_id, "tomato sauce garlic", mode="fulltext")
        assert fulltext[0]["filename"] == "recipes.txt"
        # Its vectors came home too: a search by the exact text of a chunk finds it first.
        same = search(client, auth, kb_id, best["text"], mode="vector", top_k=1)
        assert same[0]["chunk_id"] == best["chunk_id"]

        # A new version with other chunking, built on a node: it answers from the API once
        # its job succeeded, and the version it replaced is gone from the API's data dir too.
        rebuilt = client.post(
            f"{KNOWLEDGE}/{kb_id}/reindex",
            json={"chunking": {"splitter": "markdown", "size": 128, "overlap": 16}},
            headers=auth,
        )
        assert rebuilt.status_code == 202, rebuilt.text
        job = wait_for_job(rebuilt.json()["job_id"])
        assert job.status == "succeeded", job.error
        shown = client.get(f"{KNOWLEDGE}/{kb_id}", headers=auth).json()["active_index"]
        assert (shown["version"], shown["documents"], shown["chunking"]["size"]) == (2, 2, 128)
        indexes = data_dir / "knowledge" / kb_id / "indexes"
        assert sorted(path.name for path in indexes.iterdir()) == [shown["id"]]
        assert first_version != shown["id"]
        passages = search(client, auth, kb_id, "trains second class", mode="fulltext")
        assert passages[0]["filename"] == "handbook.md"
        assert "second class" in passages[0]["text"]
        assert (node_dir / "knowledge" / kb_id / "indexes" / shown["id"]).is_dir()
