"""Embedders: the demo model on the CPU, an OpenAI-compatible endpoint over real HTTP, and
resolving a model reference to the right one."""

from __future__ import annotations

import threading

import numpy
import pytest

from tests.openai_double import OpenAIDouble, Reply, hashed_vectors
from tuneyard.basemodels.service import demo_embedding_folder
from tuneyard.config import get_settings, reset_settings
from tuneyard.db import session_scope
from tuneyard.errors import Invalid, Unavailable
from tuneyard.knowledge import embedders
from tuneyard.knowledge.embedders import (
    EndpointEmbedder,
    LocalEmbedder,
    embedder_for,
    embedder_name,
)


@pytest.fixture(scope="module")
def demo_embedder() -> LocalEmbedder:
    return LocalEmbedder(demo_embedding_folder())


@pytest.mark.slow
@pytest.mark.nodb
class TestLocalEmbedder:
    def test_demo_model_gives_normalized_384_dimension_vectors(self, demo_embedder):
        vectors = demo_embedder.embed(["The cat sat on the mat.", "Quarterly revenue rose."])
        assert vectors.shape == (2, 384) and vectors.dtype == numpy.float32
        assert numpy.linalg.norm(vectors, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
        assert demo_embedder.dimensions == 384

    def test_similar_texts_are_closer_than_unrelated_ones(self, demo_embedder):
        cat, kitten, tax = demo_embedder.embed(
            [
                "A cat is sleeping on the sofa.",
                "A kitten naps on the couch.",
                "File the corporate tax return before April.",
            ]
        )
        assert float(cat @ kitten) > float(cat @ tax) + 0.3

    def test_tokens_and_limits_come_from_its_tokenizer(self, demo_embedder):
        # all-MiniLM-L6-v2 reads 256 tokens, [CLS] and [SEP] among them.
        assert demo_embedder.max_tokens == 254
        assert demo_embedder.count_tokens("hello world") == 2
        assert demo_embedder.count_tokens("") == 0

    def test_counts_stay_unpadded_after_a_batch_is_embedded(self, demo_embedder):
        # Embedding pads the batch to its longest text; counting must not see that padding.
        demo_embedder.embed(["a short text", "a longer text " * 40])
        assert demo_embedder.count_tokens("Hello world") == 2
        assert demo_embedder.count_tokens("word " * 300) == 300

    def test_batches_give_what_one_at_a_time_gives(self, demo_embedder):
        texts = [
            f"sentence number {i} about topic {i % 7}" for i in range(embedders.BATCH_SIZE + 5)
        ]
        together = demo_embedder.embed(texts)
        alone = numpy.concatenate([demo_embedder.embed([text]) for text in texts[:3]])
        assert together.shape == (len(texts), 384)
        assert together[:3] == pytest.approx(alone, abs=1e-4)
        assert demo_embedder.embed([]).shape == (0, 384)

    def test_a_huge_text_is_cut_where_the_model_stops_reading(self, demo_embedder):
        head = "word " * 300
        huge, same = demo_embedder.embed([head + "x" * 5_000_000, head])
        assert float(huge @ same) == pytest.approx(1.0, abs=1e-4)

    def test_the_model_is_loaded_once_and_shared_by_threads(self, demo_embedder):
        again = LocalEmbedder(demo_embedding_folder())
        assert again._model is demo_embedder._model
        results: list[numpy.ndarray] = []
        threads = [
            threading.Thread(target=lambda: results.append(again.embed(["same text"] * 20)))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 4
        assert all(numpy.allclose(result, results[0], atol=1e-5) for result in results)

    def test_non_text_is_refused(self, demo_embedder):
        with pytest.raises(Invalid, match="Only text"):
            demo_embedder.embed(["fine", 3])  # type: ignore[list-item]


@pytest.mark.nodb
def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(Invalid, match="no config.json"):
        LocalEmbedder(tmp_path)


@pytest.mark.nodb
@pytest.mark.nodb
class TestEndpointEmbedder:
    def test_embeds_in_batches_and_normalizes(self):
        with OpenAIDouble(model="embedder") as double:
            embedder = EndpointEmbedder(double.url, "sk-test", "embedder")
            texts = [f"text {i}" for i in range(embedders.ENDPOINT_BATCH + 6)]
            vectors = embedder.embed(texts)
        assert vectors.shape == (len(texts), 8) and vectors.dtype == numpy.float32
        assert numpy.linalg.norm(vectors, axis=1) == pytest.approx([1.0] * len(texts), abs=1e-5)
        expected = numpy.array(hashed_vectors(["text 3"]), dtype=numpy.float32)[0]
        assert vectors[3] == pytest.approx(expected / numpy.linalg.norm(expected), abs=1e-6)
        # Two batches, 64 and 6 inputs; no probe: the answers told the dimensions.
        sizes = [len(request["input"]) for request in double.requests]
        assert sizes == [embedders.ENDPOINT_BATCH, 6]
        assert all(request["model"] == "embedder" for request in double.requests)

    def test_dimensions_come_from_one_probe(self):
        with OpenAIDouble(embed=lambda inputs: hashed_vectors(inputs, 5)) as double:
            embedder = EndpointEmbedder(double.url, None, "m")
            assert embedder.dimensions == 5
            assert embedder.dimensions == 5
            assert len(double.requests) == 1

    def test_busy_answers_are_retried(self, monkeypatch):
        monkeypatch.setattr(embedders, "BACKOFF_SECONDS", 0.01)
        answers = iter([Reply("slow down", 429, retry_after=0.05), Reply("oops", 503)])

        def flaky(inputs):
            return next(answers, None) or hashed_vectors(inputs)

        with OpenAIDouble(embed=flaky) as double:
            vectors = EndpointEmbedder(double.url, None, "m").embed(["a", "b"])
        assert vectors.shape == (2, 8)
        # 429, 503, then the answer; no probe: the dimensions were never asked.
        assert len(double.requests) == 3

    def test_gives_up_after_the_retries(self, monkeypatch):
        monkeypatch.setattr(embedders, "BACKOFF_SECONDS", 0.001)
        with OpenAIDouble(embed=lambda inputs: Reply("down", 500)) as double:
            embedder = EndpointEmbedder(double.url, None, "m")
            with pytest.raises(Unavailable, match=r"/v1/embeddings failed \(500\).*gave up"):
                embedder.embed(["a"])
        assert len(double.requests) == embedders.ENDPOINT_RETRIES + 1

    def test_a_change_of_dimensions_is_refused(self):
        sizes = iter([8, 8, 12])
        with OpenAIDouble(embed=lambda inputs: hashed_vectors(inputs, next(sizes))) as double:
            embedder = EndpointEmbedder(double.url, None, "m")
            assert embedder.dimensions == 8
            embedder.embed(["one"])
            with pytest.raises(Unavailable, match=r"12-dimensional vectors; m gave 8 before"):
                embedder.embed(["two"])

    @pytest.mark.parametrize(
        ("answer", "message"),
        [
            (lambda inputs: hashed_vectors(inputs)[:-1], "returned 1 vectors for 2 texts"),
            (lambda inputs: hashed_vectors(inputs * 2), "returned 4 vectors for 2 texts"),
            (lambda inputs: [[0.1, 0.2], [0.3]], "different or no dimensions"),
            (lambda inputs: [[0.0, 0.0], [0.3, 0.1]], "all-zero"),
            (lambda inputs: [["a", "b"], [0.3, 0.1]], "not all numbers"),
            (lambda inputs: [[1e39, 0.1], [0.3, 0.1]], "NaN or infinite"),
        ],
    )
    def test_wrong_answers_are_refused_naming_the_endpoint(self, answer, message):
        with OpenAIDouble(embed=answer) as double:
            with pytest.raises(Unavailable, match=message) as caught:
                EndpointEmbedder(double.url, None, "m").embed(["a", "b"])
            assert f"{double.url}/embeddings" in caught.value.message

    def test_a_refused_key_and_a_bad_request_say_so(self):
        refusing = OpenAIDouble(embed=lambda inputs: Reply("bad key sk-secret", 401))
        with refusing as double, pytest.raises(Unavailable, match="refused the API key"):
            EndpointEmbedder(double.url, "sk-secret", "m").embed(["a"])
        with OpenAIDouble(embed=lambda inputs: Reply("no model sk-secret", 404)) as double:
            with pytest.raises(Invalid, match="refused the request") as caught:
                EndpointEmbedder(double.url, "sk-secret", "m").embed(["a"])
            assert "sk-secret" not in caught.value.message

    def test_an_unreachable_endpoint_is_named(self):
        from tests.helpers import closed_port

        url = f"http://127.0.0.1:{closed_port()}/v1"
        with pytest.raises(Unavailable, match=f"Cannot reach the embedding endpoint {url}"):
            EndpointEmbedder(url, None, "m").embed(["a"])

    def test_a_malformed_base_url_is_refused(self):
        with pytest.raises(Invalid, match="cannot be called"):
            EndpointEmbedder("ftp://example.com", None, "m")


class TestEmbedderFor:
    def test_a_third_party_embedding_entry_gives_its_endpoint(self, principal):
        from tuneyard.thirdparty.service import create_third_party

        with OpenAIDouble() as double:
            with session_scope() as session:
                row = create_third_party(
                    session,
                    principal,
                    "remote-embed",
                    "openai-compatible",
                    "text-embed",
                    model_type="embedding",
                    base_url=double.url,
                    api_key="sk-remote",
                )
                entry_id = row.id
            with session_scope() as session:
                embedder = embedder_for(session, principal, "remote-embed")
                assert (
                    embedder_name(session, principal, "remote-embed") == f"third-party:{entry_id}"
                )
            assert isinstance(embedder, EndpointEmbedder)
            assert embedder.name == f"third-party:{entry_id}"
            assert embedder.embed(["hello"]).shape == (1, 8)
        assert double.requests[-1]["model"] == "text-embed"

    def test_a_chat_model_cannot_embed(self, principal):
        from tuneyard.thirdparty.service import create_third_party

        with session_scope() as session:
            create_third_party(
                session,
                principal,
                "chatty",
                "openai-compatible",
                "chat-model",
                base_url="http://127.0.0.1:9/v1",
            )
        with session_scope() as session, pytest.raises(Invalid, match="cannot embed text"):
            embedder_for(session, principal, "chatty")

    @pytest.mark.slow
    def test_a_base_model_of_type_embedding_gives_its_folder(self, principal, monkeypatch):
        from tuneyard.basemodels.service import register_path

        folder = demo_embedding_folder()
        roots = f"{get_settings().model_roots},{folder.parent}"
        monkeypatch.setenv("TUNEYARD_MODEL_ROOTS", roots)
        reset_settings()
        with session_scope() as session:
            row = register_path(session, principal, "minilm", str(folder), model_type="embedding")
            model_id = row.id
        with session_scope() as session:
            embedder = embedder_for(session, principal, "base:minilm")
        assert isinstance(embedder, LocalEmbedder)
        assert embedder.name == f"base:{model_id}"
        assert embedder.dimensions == 384
