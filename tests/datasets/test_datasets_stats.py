"""Dataset statistics: characters per field, and tokens per record with a base model's tokenizer."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from tests.helpers import CHAT_RECORD, PAIR_RECORD, QA, add_and_parse, jsonl, post_dataset, user_in
from tuneyard.db import session_scope
from tuneyard.models import BaseModel

API = "/api/v1/datasets"
SMOLLM_SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n"
)


def add_base_model(principal, path, name="smol", status="ready") -> str:
    with session_scope() as session:
        model = BaseModel(
            project_id=principal.project_id,
            technical_name=name,
            model_name=name,
            source="path",
            source_ref=str(path),
            path=str(path),
            status=status,
        )
        session.add(model)
        session.flush()
        return model.id


def stats(client, auth, dataset_id, **params):
    response = client.get(f"{API}/{dataset_id}/stats", headers=auth, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def count_tokens(tokenizer_dir, text: str, special: bool) -> int:
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    return len(tokenizer.encode(text, add_special_tokens=special).ids)


class TestCharacters:
    def test_min_mean_max_per_field(self, client, auth, worker):
        dataset, _ = add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*QA))
        assert stats(client, auth, dataset["id"]) == {
            "record_count": 3,
            "fields": {
                "prompt": {"min": 12, "mean": (12 + 18 + 18) / 3, "max": 18},
                "completion": {"min": 1, "mean": 10 / 3, "max": 5},
            },
            "tokens": None,
        }

    def test_messages_count_their_contents(self, client, auth, worker):
        dataset, _ = add_and_parse(client, auth, "chat", "chat.jsonl", jsonl(CHAT_RECORD))
        fields = stats(client, auth, dataset["id"])["fields"]
        assert fields == {"messages": {"min": 17, "mean": 17.0, "max": 17}}

    def test_a_dataset_still_parsing_is_409(self, client, auth):
        accepted = post_dataset(client, auth, "qa", "qa.jsonl", jsonl(*QA)).json()
        response = client.get(f"{API}/{accepted['id']}/stats", headers=auth)
        assert response.status_code == 409


class TestTokens:
    def test_chat_records_are_rendered_with_the_chat_template(
        self, client, auth, worker, principal, tokenizer_dir
    ):
        short = {"messages": [{"role": "user", "content": "Hi"}]}
        dataset, _ = add_and_parse(client, auth, "chat", "chat.jsonl", jsonl(short, CHAT_RECORD))
        model_id = add_base_model(principal, tokenizer_dir)
        tokens = stats(client, auth, dataset["id"], base_model_id=model_id)["tokens"]
        rendered_short = SMOLLM_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n"
        rendered_chat = (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n"
        )
        short_count = count_tokens(tokenizer_dir, rendered_short, special=False)
        chat_count = count_tokens(tokenizer_dir, rendered_chat, special=False)
        assert short_count > chat_count  # the default system prompt is the longer one
        assert tokens["method"] == "chat_template"
        assert (tokens["count"], tokens["min"], tokens["max"]) == (2, chat_count, short_count)
        assert tokens["mean"] == (chat_count + short_count) / 2
        assert (tokens["p50"], tokens["p95"]) == (chat_count, short_count)
        assert tokens["base_model_id"] == model_id
        assert sum(bucket["count"] for bucket in tokens["buckets"]) == 2

    def test_counts_match_the_transformers_chat_template(
        self, client, auth, worker, principal, tokenizer_dir
    ):
        from transformers import AutoTokenizer

        dataset, _ = add_and_parse(client, auth, "chat", "chat.jsonl", jsonl(CHAT_RECORD))
        model_id = add_base_model(principal, tokenizer_dir)
        tokens = stats(client, auth, dataset["id"], base_model_id=model_id)["tokens"]
        reference = AutoTokenizer.from_pretrained(tokenizer_dir)
        ids = reference.apply_chat_template(
            CHAT_RECORD["messages"], tokenize=True, return_dict=False
        )
        assert tokens["max"] == len(ids)

    def test_other_formats_join_their_texts(self, client, auth, worker, principal, tokenizer_dir):
        dataset, _ = add_and_parse(client, auth, "pairs", "pairs.jsonl", jsonl(PAIR_RECORD))
        model_id = add_base_model(principal, tokenizer_dir)
        tokens = stats(client, auth, dataset["id"], base_model_id=model_id)["tokens"]
        longer = count_tokens(tokenizer_dir, "Say hi\nGo away.", special=True)
        assert tokens["method"] == "joined_text"
        assert tokens["max"] == longer

    def test_histogram_and_records_over_max_seq_length(
        self, client, auth, worker, principal, tokenizer_dir
    ):
        records = [{"prompt": " ".join(["word"] * n)} for n in range(1, 101)]
        dataset, _ = add_and_parse(client, auth, "words", "words.jsonl", jsonl(*records))
        model_id = add_base_model(principal, tokenizer_dir)
        tokens = stats(client, auth, dataset["id"], base_model_id=model_id, max_seq_length=50)[
            "tokens"
        ]
        # "word word ... word": one token a word with this tokenizer.
        assert count_tokens(tokenizer_dir, records[9]["prompt"], special=True) == 10
        assert (tokens["count"], tokens["min"], tokens["max"]) == (100, 1, 100)
        assert (tokens["p50"], tokens["p95"], tokens["mean"]) == (50, 95, 50.5)
        assert tokens["buckets"] == [
            {"start": 1 + 10 * i, "end": 11 + 10 * i, "count": 10} for i in range(10)
        ]
        assert tokens["max_seq_length"] == 50
        assert tokens["over_max_seq_length"] == 50

    def test_max_seq_length_needs_a_base_model(self, client, auth, worker):
        dataset, _ = add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*QA))
        response = client.get(f"{API}/{dataset['id']}/stats?max_seq_length=10", headers=auth)
        assert response.status_code == 422
        assert response.json()["detail"].startswith("max_seq_length is counted in tokens")

    @pytest.mark.parametrize("value", ["0", "-5", "many"])
    def test_max_seq_length_is_a_positive_integer(self, client, auth, value):
        response = client.get(f"{API}/x/stats?max_seq_length={value}", headers=auth)
        assert response.status_code == 422

    def test_unknown_base_model_is_404(self, client, auth, worker):
        dataset, _ = add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*QA))
        response = client.get(f"{API}/{dataset['id']}/stats?base_model_id=nope", headers=auth)
        assert response.status_code == 404
        assert response.json()["detail"] == (
            "No base model 'nope'. List them with `tuneyard base list`."
        )

    def test_another_projects_base_model_is_404(
        self, client, auth, worker, principal, tokenizer_dir
    ):
        other = user_in(client, "2002", "bob")
        dataset, _ = add_and_parse(client, other, "qa", "qa.jsonl", jsonl(*QA))
        model_id = add_base_model(principal, tokenizer_dir)
        response = client.get(
            f"{API}/{dataset['id']}/stats?base_model_id={model_id}", headers=other
        )
        assert response.status_code == 404

    def test_a_base_model_not_ready_is_409(self, client, auth, worker, principal, tokenizer_dir):
        dataset, _ = add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*QA))
        model_id = add_base_model(principal, tokenizer_dir, status="importing")
        response = client.get(f"{API}/{dataset['id']}/stats?base_model_id={model_id}", headers=auth)
        assert response.status_code == 409
        assert response.json()["detail"] == (
            "Base model 'smol' is not ready (importing); count tokens once it is."
        )

    def test_a_base_model_without_tokenizer_json_is_422(
        self, client, auth, worker, principal, tmp_path
    ):
        dataset, _ = add_and_parse(client, auth, "qa", "qa.jsonl", jsonl(*QA))
        model_id = add_base_model(principal, tmp_path)
        response = client.get(f"{API}/{dataset['id']}/stats?base_model_id={model_id}", headers=auth)
        assert response.status_code == 422
        assert response.json()["detail"] == (
            f"Base model 'smol' has no tokenizer.json in {tmp_path}; token counts need the "
            "model's fast tokenizer file."
        )
