"""Assessments: checking a request, previewing it, running it as a job against scripted
OpenAI-compatible doubles (verdicts read or not, the swap rule, retries, the per-backend limit,
cancel and resume), exports, preference datasets, and a real tiny model as a candidate."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest

from tests.helpers import (
    SUMS,
    login,
    number,
    scripted_pairwise,
    upload,
    user_in,
    wait_for_job,
)
from tests.openai_double import OpenAIDouble, Reply, last_user
from tuneyard.assessment import prompts
from tuneyard.assessment.metrics import agreement, score_answer, token_agreement, token_overlap
from tuneyard.assessment.service import candidate_messages
from tuneyard.assessment.stats import bootstrap_mean, paired_difference
from tuneyard.assessment.verdicts import combine_pairwise, parse_score, parse_winner
from tuneyard.config import reset_settings
from tuneyard.errors import Invalid

API = "/api/v1/assessments"


@pytest.fixture(autouse=True)
def assessment_settings(data_dir, monkeypatch):
    """Small limits, so the tests see them hold; no waiting between retries."""
    monkeypatch.setenv("TUNEYARD_ASSESSMENT_REMOTE_CONCURRENCY", "3")
    monkeypatch.setenv("TUNEYARD_ASSESSMENT_RETRIES", "2")
    reset_settings()


def third_party(client, auth, name: str, double: OpenAIDouble) -> str:
    response = client.post(
        "/api/v1/third-party-models",
        json={
            "name": name,
            "provider": "openai-compatible",
            "model_name": double.model,
            "base_url": double.url,
        },
        headers=auth,
    )
    assert response.status_code == 201, response.text
    return f"third-party:{response.json()['id']}"


def body(dataset: str, *candidates: str, **extra) -> dict:
    return {
        "name": extra.pop("name", "run"),
        "dataset_id": dataset,
        "sample": extra.pop("sample", {"size": len(SUMS)}),
        "candidates": [{"model": model, "prompt": "{{prompt}}"} for model in candidates],
        **extra,
    }


def run(client, auth, request: dict, status: str = "succeeded") -> dict:
    response = client.post(API, json=request, headers=auth)
    assert response.status_code == 202, response.text
    job = wait_for_job(response.json()["job_id"])
    assert job.status == status, job.error
    return client.get(f"{API}/{response.json()['id']}", headers=auth).json()


def rows(client, auth, assessment_id: str) -> list[dict]:
    response = client.get(f"{API}/{assessment_id}/results?limit=500", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["items"]


# -- judges' answers read, or counted as unread -----------------------------------------------


@pytest.mark.nodb
class TestVerdicts:
    def test_the_last_json_object_wins(self):
        text = (
            'First {"score": 3} then, thinking again:\n```json\n{"score": 8, "reason": "ok"}\n```'
        )
        verdict = parse_score(text)
        assert (verdict.value, verdict.reason, verdict.how) == (8, "ok", "json")

    def test_a_pattern_when_there_is_no_json(self):
        assert parse_score("Rating: [[6]]").value == 6
        assert parse_score("I'd give it 7/10.").value == 7
        assert parse_winner("My verdict: [[B]]").value == "B"
        assert parse_winner("The winner is tie.").value == "tie"
        assert parse_winner('{"winner": "Response A"}').value == "A"

    def test_what_cannot_be_read_is_unparsed_and_says_why(self):
        assert parse_score("Quite good overall.").problem.startswith("no {")
        assert parse_score('{"score": 12}').problem == "the score 12 is outside 1-10"
        assert parse_score('{"score": "great"}').value is None
        assert parse_winner('{"winner": "both bad"}').problem.startswith("the winner")
        assert parse_winner("I cannot decide").value is None

    def test_the_swap_rule(self):
        a, b, tie = parse_winner("[[A]]"), parse_winner("[[B]]"), parse_winner("[[C]]")
        # The swapped call saw candidate A's answer as B.
        assert combine_pairwise(a, b) == {"winner": "A", "consistent": True, "flip": False}
        assert combine_pairwise(b, a)["winner"] == "B"
        assert combine_pairwise(tie, tie)["winner"] == "tie"
        # The same position both times: a flip, counted as a tie.
        assert combine_pairwise(a, a) == {"winner": "tie", "consistent": False, "flip": True}
        # A winner one way and a tie the other way: inconsistent, a tie, not a flip.
        assert combine_pairwise(a, tie) == {"winner": "tie", "consistent": False, "flip": False}
        assert combine_pairwise(a, parse_winner("?"))["winner"] is None


@pytest.mark.nodb
class TestFigures:
    def test_reference_metrics(self):
        values = score_answer(
            ["exact", "contains", "numeric", "regex", "bleu", "rouge_l"],
            "The answer is 1,024.",
            "1024",
        )
        assert values["exact"] == 0 and values["contains"] == 0 and values["numeric"] == 1
        assert values["regex"] == 0 and values["bleu"] < 100 and values["rouge_l"] == 0
        assert score_answer(["regex"], "The answer is 42.", r"\b4\d\b") == {"regex": 1.0}
        perfect = score_answer(["exact", "bleu", "rouge_l"], " Paris ", "Paris")
        assert perfect == {"exact": 1.0, "bleu": pytest.approx(100), "rouge_l": 1.0}

    def test_a_record_a_metric_cannot_score_says_why(self):
        values = score_answer(["regex", "numeric"], "x", "([unclosed")
        assert values["regex"] is None and values["numeric"] is None
        assert "not a regular expression" in values["errors"]["regex"]
        assert "no numbers" in values["errors"]["numeric"]

    def test_agreement(self):
        assert agreement("Paris.", " Paris. ") == {
            "identical": True,
            "token_overlap": 1.0,
            "token_agreement": 1.0,
        }
        assert token_overlap("the cat sat", "a dog ran") == 0
        assert 0 < token_overlap("the cat sat", "the cat ran") < 1

    def test_bootstrap_interval_and_noise(self):
        estimate = bootstrap_mean([1.0, 0.0] * 50)
        assert estimate["mean"] == 0.5 and estimate["ci"][0] < 0.5 < estimate["ci"][1]
        assert bootstrap_mean([1.0]) == {"mean": 1.0, "ci": None, "n": 1}
        clear = paired_difference([1.0] * 30, [9.0] * 30)
        assert clear["mean"] == 8 and clear["within_noise"] is False
        noisy = paired_difference([1, 9, 1, 9, None], [9, 1, 9, 1, 5])
        assert noisy["n"] == 4 and noisy["within_noise"] is True


@pytest.mark.nodb
def test_a_chat_record_asks_its_conversation_and_answers_its_last_reply():
    record = {
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    }
    candidate = {"system": None, "prompt": "{{ messages }}"}
    assert candidate_messages(candidate, record) == record["messages"][:-1]
    assert candidate_messages({**candidate, "system": "Mine."}, record)[:2] == [
        {"role": "system", "content": "Mine."},
        {"role": "user", "content": "Hi"},
    ]
    assert prompts.reference_text(record, "messages") == "4"
    # Anything more than the placeholder alone is text, the messages as JSON.
    text = candidate_messages({"prompt": "Chat: {{messages}}"}, record)[0]["content"]
    assert text.startswith('Chat: [{"role": "system"')
    assert token_agreement("the cat sat down", "the cat ran") == 0.5
    assert token_agreement("", "") == 1 and token_agreement("a", "b c") == 0


@pytest.mark.nodb
def test_placeholders_are_checked_and_filled():
    prompts.check_template("p", "Q: {{ prompt }} ({{topic}})", ["prompt", "topic"])
    with pytest.raises(Invalid) as error:
        prompts.check_template("candidates[0].prompt", "{{Prompt}} {{nope}}", ["prompt"])
    assert "{{Prompt}} (did you mean {{prompt}}?)" in error.value.message
    assert "{{nope}}" in error.value.message and "columns: {{prompt}}" in error.value.message
    assert prompts.render("{{a}}-{{ b }}-{{c}}", {"a": 1, "b": None, "c": [1]}) == "1--[1]"
    assert prompts.render("{{ResponseA}}", {}, keep=["ResponseA"]) == "{{ResponseA}}"


# -- checking a request ------------------------------------------------------------------------


@pytest.fixture
def qa(client, auth, worker) -> str:
    return upload(client, auth, "qa", SUMS)


@pytest.fixture
def echo(client, auth):
    """A candidate that answers "alpha N" to question N."""
    with OpenAIDouble(lambda messages: f"alpha {number(last_user(messages))}") as double:
        double.ref = third_party(client, auth, "alpha", double)
        yield double


class TestRequests:
    def test_unknown_placeholders_are_refused_naming_them(self, client, auth, qa, echo):
        request = body(qa, echo.ref)
        request["candidates"][0]["prompt"] = "{{question}} and {{prompt}} and {{ topc }}"
        response = client.post(API, json=request, headers=auth)
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert "Unknown placeholders in candidates[0].prompt: {{question}}" in detail
        assert "{{topc}} (did you mean {{topic}}?)" in detail
        assert "{{completion}}" in detail  # the columns it could use
        judge = {"model": echo.ref, "kind": "score", "prompt": "{{ResponseA}} vs {{ref_answer}}"}
        response = client.post(API, json=body(qa, echo.ref, judge=judge), headers=auth)
        assert response.status_code == 422
        assert "{{ref_answer}} without a reference_column" in response.json()["detail"]
        judge = {"model": echo.ref, "kind": "score", "prompt": "{{ResponseA}} {{ResponseB}}"}
        detail = client.post(API, json=body(qa, echo.ref, judge=judge), headers=auth).json()[
            "detail"
        ]
        assert "only a pairwise judge of two candidates" in detail
        judge = {"model": echo.ref, "kind": "pairwise", "prompt": "{{ResponseA}}"}
        detail = client.post(
            API, json=body(qa, echo.ref, echo.ref, judge=judge), headers=auth
        ).json()["detail"]
        assert detail == (
            "The judge prompt never shows {{ResponseB}}: a judge must see the answers it judges."
        )
        judge = {"model": echo.ref, "kind": "pairwise", "prompt": "{{ResponseA}}{{ResponseB}}"}
        detail = client.post(API, json=body(qa, echo.ref, judge=judge), headers=auth).json()
        assert detail["detail"] == "A pairwise judge compares two answers: give two candidates."
        # Nothing was created or queued.
        assert client.get(API, headers=auth).json()["total"] == 0
        assert client.get("/api/v1/jobs?kind=assessment.run", headers=auth).json()["total"] == 0

    def test_other_bad_requests(self, client, auth, qa, echo):
        cases = [
            (body(qa, echo.ref, sample={"size": 9}), 422, "has 8 records; sample at most"),
            (body(qa, echo.ref, sample={"size": 0}), 422, "sample.size"),
            (body(qa, "nobody"), 404, "candidates[0].model: No model 'nobody'"),
            (body("missing", echo.ref), 404, "No dataset 'missing'"),
            (body(qa, echo.ref, reference_column="answer"), 422, "not a column of dataset"),
            (body(qa, echo.ref, metrics=["exact"]), 422, "set reference_column"),
            (
                body(qa, echo.ref, reference_column="completion", metrics=["meteor"]),
                422,
                "Unknown metric 'meteor'",
            ),
            (body(qa, echo.ref, echo.ref, echo.ref), 422, "candidates"),
        ]
        for request, status, words in cases:
            response = client.post(API, json=request, headers=auth)
            assert response.status_code == status, (request, response.text)
            assert words in response.json()["detail"], response.text
        assert client.get(API, headers=auth).json()["total"] == 0

    def test_preview_shows_up_to_five_rendered_records(self, client, auth, qa, echo):
        request = body(
            qa,
            echo.ref,
            echo.ref,
            sample={"size": 7, "seed": 3},
            reference_column="completion",
            judge={
                "model": echo.ref,
                "kind": "pairwise",
                "system": "Judge of {{topic}}",
                "prompt": "Q {{Question}} R {{ref_answer}} A {{ResponseA}} B {{ResponseB}}",
            },
        )
        request["candidates"][1]["system"] = "Be brief about {{topic}}."
        preview = client.post(f"{API}/preview", json=request, headers=auth)
        assert preview.status_code == 200, preview.text
        records = preview.json()["records"]
        assert preview.json()["sample_size"] == 7 and len(records) == 5
        indices = [record["record_index"] for record in records]
        assert indices == sorted(indices) and len(set(indices)) == 5
        # The same seed draws the same records.
        again = client.post(f"{API}/preview", json=request, headers=auth).json()["records"]
        assert [record["record_index"] for record in again] == indices
        first = records[0]
        source = SUMS[first["record_index"]]
        assert first["candidates"][0] == {"system": None, "prompt": source["prompt"]}
        assert first["candidates"][1]["system"] == f"Be brief about {source['topic']}."
        assert first["judge"] == [
            {
                "system": f"Judge of {source['topic']}",
                "prompt": f"Q {source['prompt']} R {source['completion']} "
                "A {{ResponseA}} B {{ResponseB}}",
            }
        ]
        # Without a seed: the first records.
        request["sample"] = {"size": 2}
        records = client.post(f"{API}/preview", json=request, headers=auth).json()["records"]
        assert [record["record_index"] for record in records] == [0, 1]
        # Nothing was called.
        assert echo.requests == []

    def test_a_viewer_previews_but_cannot_create(self, client, auth, qa, echo):
        created = client.post(
            "/api/v1/users",
            json={"username": "vic", "password": "viewer-pass-1", "role": "viewer"},
            headers=auth,
        )
        assert created.status_code == 201, created.text
        viewer = login(client, "viewer-pass-1", username="vic")
        assert client.post(f"{API}/preview", json=body(qa, echo.ref), headers=viewer).is_success
        refused = client.post(API, json=body(qa, echo.ref), headers=viewer)
        assert refused.status_code == 403
        assert refused.json()["detail"] == "This needs the member role; you are viewer."
        assert client.get(API, headers=auth).json()["total"] == 0

    def test_builtin_judge_prompts_and_metrics(self, client, auth):
        builtins = client.get(f"{API}/judge-prompts", headers=auth).json()
        assert {item["kind"] for item in builtins} == {"score", "pairwise"}
        assert all("{{ResponseA}}" in item["prompt"] for item in builtins)
        names = {m["name"]: m for m in client.get(f"{API}/metrics", headers=auth).json()}
        assert set(names) == {"exact", "contains", "regex", "numeric", "bleu", "rouge_l"}
        assert names["bleu"]["scale"] == "0-100" and not names["regex"]["default"]


# -- running ------------------------------------------------------------------------------------

PAIRWISE_PROMPT = "Question: {{Question}}\n[A] {{ResponseA}}\n[B] {{ResponseB}}"


class TestRuns:
    def test_pairwise_verdicts_the_swap_rule_and_the_counts(self, client, auth, qa, echo):
        with (
            OpenAIDouble(lambda m: f"beta {number(last_user(m))}", latency=0.05) as beta,
            OpenAIDouble(scripted_pairwise) as judge,
        ):
            request = body(
                qa,
                echo.ref,
                third_party(client, auth, "beta", beta),
                judge={
                    "model": third_party(client, auth, "judge", judge),
                    "kind": "pairwise",
                    "prompt": PAIRWISE_PROMPT,
                },
            )
            assessment = run(client, auth, request)
            assert len(judge.requests) == 16  # every row asked twice
        summary = assessment["summary"]
        verdicts = summary["judge"]
        assert assessment["status"] == "succeeded" and assessment["progress"] == 100
        assert summary["rows"] == {"total": 8, "done": 8, "error": 0, "pending": 0}
        assert (verdicts["verdicts_parsed"], verdicts["verdicts_total"]) == (7, 8)
        assert (verdicts["answers_parsed"], verdicts["answers_total"]) == (14, 16)
        assert verdicts["unparsed"] == 2
        assert verdicts["wins"] == {"A": 4, "B": 1, "tie": 2}
        assert (verdicts["flips"], verdicts["inconsistent"]) == (1, 1)
        assert verdicts["position_bias_rate"] == pytest.approx(1 / 7)
        assert verdicts["win_rate"]["A"]["mean"] == pytest.approx(5 / 7)
        assert "verdicts parsed: 7 of 8" in summary["lines"]
        assert isinstance(verdicts["within_noise"], bool)
        assert summary["agreement"]["identical"] == 0
        by_question = {
            number(row["answers"][0]["prompt"]): row for row in rows(client, auth, assessment["id"])
        }
        assert by_question[3]["verdict"] == {"winner": "tie", "consistent": False, "flip": True}
        ties = client.get(f"{API}/{assessment['id']}/results?winner=tie&limit=1", headers=auth)
        assert ties.json()["total"] == 2 and len(ties.json()["items"]) == 1
        unread = client.get(f"{API}/{assessment['id']}/results?winner=unparsed", headers=auth)
        assert [number(r["answers"][0]["prompt"]) for r in unread.json()["items"]] == [4]
        assert by_question[4]["verdict"]["winner"] is None
        unread = by_question[4]["judgments"][0]
        assert unread["raw"].startswith("Both answers") and unread["verdict"]["value"] is None
        assert {j["order"] for j in by_question[5]["judgments"]} == {"AB", "BA"}
        assert by_question[5]["verdict"]["winner"] == "A"
        answer = by_question[1]["answers"][1]
        assert answer["text"] == "beta 1" and answer["error"] is None
        assert answer["seconds"] >= 0.05 and answer["completion_tokens"] == 2

        # Failures become training data: the winner chosen, the loser rejected, ties left out.
        response = client.post(
            f"{API}/{assessment['id']}/preference-dataset", json={"name": "prefs"}, headers=auth
        )
        assert response.status_code == 201, response.text
        dataset = response.json()
        assert wait_for_job(dataset["job_id"]).status == "succeeded"
        shown = client.get(f"/api/v1/datasets/{dataset['id']}", headers=auth).json()
        assert shown["format"] == "preference" and shown["record_count"] == 5
        records = client.get(f"/api/v1/datasets/{dataset['id']}/preview", headers=auth).json()
        pairs = {number(r["prompt"]): (r["chosen"], r["rejected"]) for r in records["items"]}
        assert pairs[2] == ("beta 2", "alpha 2") and pairs[1] == ("alpha 1", "beta 1")
        assert 3 not in pairs and 4 not in pairs and 6 not in pairs

    def test_scores_with_a_reference_metrics_and_exports(self, client, auth, qa):
        def answer(messages):
            n = number(last_user(messages))
            return str(2 * n) if n % 2 else f"I think {2 * n + 1}"

        def grade(messages):
            text = last_user(messages)
            n = number(text)
            if n == 7:
                return "A fine answer, I would say eleven."
            if n == 8:
                return '{"score": 12, "reason": "too good"}'
            return json.dumps({"score": n, "reason": f"row {n}"})

        with OpenAIDouble(answer) as candidate, OpenAIDouble(grade) as judge:
            builtin = prompts.BUILTIN_JUDGE_PROMPTS["score"]
            request = body(
                qa,
                third_party(client, auth, "solver", candidate),
                reference_column="completion",
                metrics=["exact", "numeric", "rouge_l"],
                judge={
                    "model": third_party(client, auth, "grader", judge),
                    "kind": "score",
                    "system": builtin["system"],
                    "prompt": builtin["prompt"],
                },
            )
            assessment = run(client, auth, request)
            graded = judge.requests[0]["messages"]
        assert graded[0] == {"role": "system", "content": builtin["system"]}
        assert "[Reference answer]\n" in graded[1]["content"]
        assert "{{" not in graded[1]["content"]
        summary = assessment["summary"]
        assert (summary["judge"]["verdicts_parsed"], summary["judge"]["verdicts_total"]) == (6, 8)
        assert "verdicts parsed: 6 of 8" in summary["lines"]
        score = summary["judge"]["scores"][0]
        assert score["mean"] == pytest.approx(3.5) and score["n"] == 6
        assert score["histogram"] == [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
        assert score["ci"][0] <= 3.5 <= score["ci"][1]
        metrics = summary["candidates"][0]["metrics"]
        assert metrics["exact"]["mean"] == pytest.approx(0.5)
        assert metrics["numeric"]["mean"] == pytest.approx(0.5) and metrics["exact"]["n"] == 8

        exported = client.get(f"{API}/{assessment['id']}/export?format=csv", headers=auth)
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        assert 'filename="run.csv"' in exported.headers["content-disposition"]
        table = list(csv.DictReader(io.StringIO(exported.text)))
        assert len(table) == 8
        assert table[0]["prompt"] == SUMS[0]["prompt"] and table[0]["A_answer"] == "2"
        assert table[0]["A_score"] == "1.0" and table[0]["A_exact"] == "1.0"
        assert table[7]["A_score"] == "" and "12" in table[7]["A_judge_raw"]
        lines = client.get(f"{API}/{assessment['id']}/export?format=jsonl", headers=auth)
        assert lines.headers["content-type"].startswith("application/x-ndjson")
        records = [json.loads(line) for line in lines.text.splitlines()]
        assert [r["position"] for r in records] == list(range(8))
        assert records[6]["judgments"][0]["verdict"]["problem"].startswith("no {")

        # Low scores (3 or lower) become pairs with the reference as `chosen`.
        response = client.post(
            f"{API}/{assessment['id']}/preference-dataset",
            json={"name": "fixes", "max_score": 3},
            headers=auth,
        )
        assert response.status_code == 201, response.text
        assert wait_for_job(response.json()["job_id"]).status == "succeeded"
        preview = client.get(f"/api/v1/datasets/{response.json()['id']}/preview", headers=auth)
        pairs = [(r["chosen"], r["rejected"]) for r in preview.json()["items"]]
        assert pairs == [("4", "I think 5")]  # rows 1 and 3 answered the reference itself

    def test_retries_on_429_and_a_row_whose_call_keeps_failing(self, client, auth, qa):
        calls: dict[int, int] = {}

        def flaky(messages):
            n = number(last_user(messages))
            calls[n] = calls.get(n, 0) + 1
            if n == 2:
                return Reply("overloaded", status=503, retry_after=0)
            if calls[n] == 1:
                return Reply("slow down", status=429, retry_after=0)
            return f"answer {n}"

        with OpenAIDouble(flaky) as candidate:
            request = body(qa, third_party(client, auth, "flaky", candidate), sample={"size": 3})
            assessment = run(client, auth, request)
        found = rows(client, auth, assessment["id"])
        assert [row["status"] for row in found] == ["done", "error", "done"]
        assert found[0]["answers"][0]["retries"] == 1
        assert found[0]["answers"][0]["text"] == "answer 1"
        failed = found[1]["answers"][0]
        assert failed["retries"] == 2 and "failed (503): overloaded" in failed["error"]
        assert calls[2] == 3  # the first try and two retries
        summary = assessment["summary"]
        assert summary["rows"]["error"] == 1 and summary["candidates"][0]["errors"] == 1

        # Resume runs the failed row again; the answered ones are kept as they were.
        with OpenAIDouble(lambda m: f"fixed {number(last_user(m))}") as fixed:
            client.patch(
                f"/api/v1/third-party-models/{request['candidates'][0]['model'].split(':')[1]}",
                json={"base_url": fixed.url},
                headers=auth,
            )
            resumed = client.post(f"{API}/{assessment['id']}/resume", headers=auth)
            assert resumed.status_code == 202, resumed.text
            assert wait_for_job(resumed.json()["job_id"]).status == "succeeded"
            assert [number(last_user(r["messages"])) for r in fixed.requests] == [2]
        again = rows(client, auth, assessment["id"])
        assert [row["answers"][0]["text"] for row in again] == ["answer 1", "fixed 2", "answer 3"]
        assert again[0]["finished_at"] == found[0]["finished_at"]
        refused = client.post(f"{API}/{assessment['id']}/resume", headers=auth)
        assert refused.status_code == 409 and "answered every row" in refused.json()["detail"]

    def test_every_row_failing_fails_the_run(self, client, auth, qa):
        with OpenAIDouble(lambda m: Reply("no", status=500, retry_after=0)) as broken:
            request = body(qa, third_party(client, auth, "broken", broken), sample={"size": 2})
            assessment = run(client, auth, request, status="failed")
        assert assessment["status"] == "failed"
        assert "Every row of assessment run failed" in assessment["error"]
        assert assessment["summary"]["rows"]["error"] == 2

    def test_calls_stay_within_the_backend_limit(self, client, auth, qa):
        with OpenAIDouble(lambda m: "ok", latency=0.2) as slow:
            ref = third_party(client, auth, "slow", slow)
            run(client, auth, body(qa, ref, ref))
        # Sixteen calls to one endpoint, three at a time (TUNEYARD_ASSESSMENT_REMOTE_CONCURRENCY).
        assert slow.max_in_flight == 3
        assert len(slow.requests) == 16

    def test_cancel_keeps_finished_rows_and_resume_runs_the_rest(self, client, auth, qa):
        with OpenAIDouble(lambda m: f"slow {number(last_user(m))}", latency=1.0) as slow:
            request = body(qa, third_party(client, auth, "slow", slow))
            accepted = client.post(API, json=request, headers=auth).json()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                done = client.get(
                    f"{API}/{accepted['id']}/results?status=done", headers=auth
                ).json()["total"]
                if done >= 3:
                    break
                time.sleep(0.1)
            cancelled = client.post(f"{API}/{accepted['id']}/cancel", headers=auth)
            assert cancelled.status_code == 200, cancelled.text
            assert wait_for_job(accepted["job_id"]).status == "cancelled"
            stopped = client.get(f"{API}/{accepted['id']}", headers=auth).json()
            assert stopped["status"] == "cancelled"
            kept = [row for row in rows(client, auth, accepted["id"]) if row["status"] == "done"]
            assert 3 <= len(kept) < 8
            assert stopped["summary"]["rows"]["pending"] == 8 - len(kept)
            asked_before = len(slow.requests)

            resumed = client.post(f"{API}/{accepted['id']}/resume", headers=auth)
            assert resumed.status_code == 202, resumed.text
            assert wait_for_job(resumed.json()["job_id"]).status == "succeeded"
            asked = [number(last_user(r["messages"])) for r in slow.requests[asked_before:]]
        final = rows(client, auth, accepted["id"])
        assert all(row["status"] == "done" for row in final)
        kept_questions = {number(row["answers"][0]["prompt"]) for row in kept}
        assert not kept_questions & set(asked)  # finished rows were not asked again
        assert {row["finished_at"] for row in kept} <= {row["finished_at"] for row in final}
        shown = client.get(f"{API}/{accepted['id']}", headers=auth).json()
        assert shown["status"] == "succeeded" and shown["summary"]["rows"]["done"] == 8
        # Deleting waits for no job, and takes the rows with it.
        assert client.delete(f"{API}/{accepted['id']}", headers=auth).status_code == 204
        assert client.get(f"{API}/{accepted['id']}", headers=auth).status_code == 404

    def test_models_in_use_cannot_be_deleted(self, client, auth, qa):
        with OpenAIDouble(lambda m: "ok", latency=1.0) as slow:
            ref = third_party(client, auth, "slow", slow)
            accepted = client.post(API, json=body(qa, ref), headers=auth).json()
            refused = client.delete(f"/api/v1/third-party-models/{ref.split(':')[1]}", headers=auth)
            assert refused.status_code == 409 and "in use by assessment.run" in refused.text
            refused = client.delete(f"/api/v1/datasets/{qa}", headers=auth)
            assert refused.status_code == 409
            refused = client.delete(f"{API}/{accepted['id']}", headers=auth)
            assert refused.status_code == 409
            client.post(f"{API}/{accepted['id']}/cancel", headers=auth)
            assert wait_for_job(accepted["job_id"]).status == "cancelled"


class TestPreferenceBound:
    def test_pairs_longer_than_a_dataset_line_are_left_out_and_counted(
        self, client, auth, qa, monkeypatch
    ):
        padding = " and so on" * 60

        def alpha(messages):
            n = number(last_user(messages))
            return f"alpha {n}" + (padding if n >= 7 else "")

        with (
            OpenAIDouble(alpha) as first,
            OpenAIDouble(lambda m: f"beta {number(last_user(m))}") as second,
            OpenAIDouble(scripted_pairwise) as judge,
        ):
            request = body(
                qa,
                third_party(client, auth, "alpha", first),
                third_party(client, auth, "beta", second),
                judge={
                    "model": third_party(client, auth, "judge", judge),
                    "kind": "pairwise",
                    "prompt": PAIRWISE_PROMPT,
                },
            )
            assessment = run(client, auth, request)
        url = f"{API}/{assessment['id']}/preference-dataset"
        monkeypatch.setenv("TUNEYARD_DATASET_MAX_LINE_CHARS", "300")
        reset_settings()
        response = client.post(url, json={"name": "short"}, headers=auth)
        assert response.status_code == 201, response.text
        made = response.json()
        # Rows 7 and 8 were won by a 600-character answer: their pairs would not parse.
        assert (made["pairs"], made["left_out"]) == (3, 2)
        assert "2 longer than 300 characters left out" in made["description"]
        assert wait_for_job(made["job_id"]).status == "succeeded"
        preview = client.get(f"/api/v1/datasets/{made['id']}/preview", headers=auth).json()
        assert sorted(number(r["prompt"]) for r in preview["items"]) == [1, 2, 5]

        monkeypatch.setenv("TUNEYARD_DATASET_MAX_LINE_CHARS", "40")
        reset_settings()
        refused = client.post(url, json={"name": "none"}, headers=auth)
        assert refused.status_code == 409
        assert refused.json()["detail"] == (
            "Nothing to export from assessment run: each of its 5 pairs is longer than a "
            "dataset line may be (40 characters); raise TUNEYARD_DATASET_MAX_LINE_CHARS, or "
            "lower max_tokens so the answers are shorter."
        )
        names = [d["name"] for d in client.get("/api/v1/datasets", headers=auth).json()["items"]]
        assert "none" not in names


# -- two runs side by side ----------------------------------------------------------------------


def grade_sum(messages) -> str:
    """A score judge: 9 for the right sum, 2 otherwise; question 8's verdict unreadable."""
    text = last_user(messages)
    n = number(text)
    if n == 8:
        return "Hard to say."
    right = text.rsplit("Answer: ", 1)[1].strip() == str(2 * n)
    return json.dumps({"score": 9 if right else 2})


SCORE_JUDGE_PROMPT = "Question: {{Question}}\nAnswer: {{ResponseA}}"


class TestCompare:
    @pytest.fixture
    def before_after(self, client, auth, qa):
        """Before: right on odd questions only, 6 records. After: right but on question 5,
        all 8 records. Both scored by the same judge, with the exact metric."""

        def before(messages):
            n = number(last_user(messages))
            return str(2 * n) if n % 2 else "no idea"

        def after(messages):
            n = number(last_user(messages))
            return "eleven" if n == 5 else str(2 * n)

        with (
            OpenAIDouble(before) as old,
            OpenAIDouble(after) as new,
            OpenAIDouble(grade_sum) as judge,
        ):
            judged = {
                "model": third_party(client, auth, "judge", judge),
                "kind": "score",
                "prompt": SCORE_JUDGE_PROMPT,
            }
            common = {"reference_column": "completion", "metrics": ["exact"], "judge": judged}
            first = run(
                client,
                auth,
                body(
                    qa,
                    third_party(client, auth, "old", old),
                    name="before",
                    sample={"size": 6},
                    **common,
                ),
            )
            second = run(
                client,
                auth,
                body(qa, third_party(client, auth, "new", new), name="after", **common),
            )
        return first["id"], second["id"]

    def test_rows_match_by_record_and_say_what_changed(self, client, auth, before_after):
        first, second = before_after
        response = client.get(f"{API}/{first}/compare/{second}", headers=auth)
        assert response.status_code == 200, response.text
        found = response.json()
        summary = found["summary"]
        assert summary["rows"] == {"both": 6, "only_first": 0, "only_second": 2}
        assert summary["changed"] == {"better": 3, "worse": 1, "same": 2, "unknown": 0}
        assert (summary["first"]["name"], summary["second"]["model"]) == ("before", "new")
        judge = summary["judge"]
        assert judge["first"]["mean"] == pytest.approx(5.5)
        assert judge["second"]["mean"] == pytest.approx(47 / 6)
        assert judge["difference"]["mean"] == pytest.approx(14 / 6)
        assert judge["difference"]["n"] == 6
        low, high = judge["difference"]["ci"]
        assert low <= 14 / 6 <= high
        assert judge["difference"]["within_noise"] == (low <= 0 <= high)
        exact = summary["metrics"]["exact"]["difference"]
        assert exact["mean"] == pytest.approx(2 / 6) and exact["n"] == 6
        assert (
            "per record, after against before: 3 better, 1 worse, 2 the same" in (summary["lines"])
        )
        assert any(
            line.startswith("mean score: before 5.5, after 7.83") for line in summary["lines"]
        )

        items = found["items"]
        assert found["total"] == 8
        assert [item["record_index"] for item in items] == list(range(8))
        two = items[1]
        assert two["record"]["prompt"] == "What is 2 plus 2?"
        assert two["first"]["answers"][0]["text"] == "no idea" and two["first"]["value"] == 2
        assert two["second"]["answers"][0]["text"] == "4" and two["second"]["value"] == 9
        assert two["first"]["metrics"][0]["exact"] == 0 and two["changed"] == "better"
        assert items[4]["changed"] == "worse" and items[0]["changed"] == "same"
        # Records only one run sampled: the other side is empty, and nothing is said to change.
        assert items[6]["first"] is None and items[6]["changed"] is None
        assert items[7]["second"]["verdict"]["scores"] == [None]

        worse = client.get(f"{API}/{first}/compare/{second}?changed=worse", headers=auth).json()
        assert worse["total"] == 1 and worse["items"][0]["record_index"] == 4
        page = client.get(f"{API}/{first}/compare/{second}?limit=3&offset=3", headers=auth)
        assert [item["record_index"] for item in page.json()["items"]] == [3, 4, 5]
        # The other way round, better and worse swap and the difference changes sign.
        back = client.get(f"{API}/{second}/compare/{first}", headers=auth).json()["summary"]
        assert back["changed"] == {"better": 1, "worse": 3, "same": 2, "unknown": 0}
        assert back["judge"]["difference"]["mean"] == pytest.approx(-14 / 6)
        assert back["rows"]["only_first"] == 2

    def test_what_cannot_be_compared_is_refused(self, client, auth, qa, before_after):
        first, second = before_after
        other = upload(client, auth, "other", SUMS[::-1])
        with OpenAIDouble(lambda m: "ok") as echo:
            model = third_party(client, auth, "echo", echo)
            elsewhere = run(client, auth, body(other, model, name="other", sample={"size": 2}))
        with OpenAIDouble(lambda m: Reply("no", status=500, retry_after=0)) as broken:
            failed = run(
                client,
                auth,
                body(qa, third_party(client, auth, "broken", broken), name="x", sample={"size": 1}),
                status="failed",
            )
        cases = [
            (f"{first}/compare/{elsewhere['id']}", "ran on dataset 'qa' and other on 'other'"),
            (f"{first}/compare/{failed['id']}", "Assessment x is failed; compare finished"),
            (f"{first}/compare/{first}", "not itself"),
            (f"{first}/compare/{second}?candidate=1", "before has 1 candidate; choose 0."),
            (f"{first}/compare/{second}?changed=maybe", "changed"),
        ]
        for path, words in cases:
            response = client.get(f"{API}/{path}", headers=auth)
            assert response.status_code == 422, (path, response.text)
            assert words in response.json()["detail"], response.text
        # Another project sees none of them.
        stranger = user_in(client, "2002", "mallory")
        hidden = client.get(f"{API}/{first}/compare/{second}", headers=stranger)
        assert hidden.status_code == 404
        assert hidden.json()["detail"].startswith(f"No assessment '{first}'")


# -- a live model's fidelity figure --------------------------------------------------------------


def test_a_live_model_shows_its_latest_fidelity_check(client, auth):
    from tests.helpers import finished_fidelity_check, live_model_row, user_in

    live = live_model_row(quantization="q4_K_M")
    other = live_model_row(quantization="q8_0")
    url = f"/api/v1/live-models/{live}"
    assert client.get(url, headers=auth).json()["fidelity"] is None
    older = finished_fidelity_check({live: [True, True, True, False], other: [True] * 4})
    newer = finished_fidelity_check({live: [True, False, False, False]})
    # Later checks that do not count: one that failed, one of another live model only, and
    # one in another project that names this live model.
    finished_fidelity_check({live: [True] * 4}, status="failed")
    finished_fidelity_check({other: [False] * 4})
    user_in(client, "2002", "mallory")
    finished_fidelity_check({live: [True] * 4}, project_code="2002")

    figure = client.get(url, headers=auth).json()["fidelity"]
    assert figure["text"] == "q4_K_M agrees with its source on 1 of 4 prompts"
    assert (figure["assessment_id"], figure["identical"], figure["compared"]) == (newer, 1, 4)
    assert figure["token_agreement"] == pytest.approx(0.625)
    shown = client.get(f"/api/v1/live-models/{other}", headers=auth).json()["fidelity"]
    assert shown["text"] == "q8_0 agrees with its source on 0 of 4 prompts"
    # Deleting the latest check brings back the one before it.
    assert client.delete(f"{API}/{newer}", headers=auth).status_code == 204
    figure = client.get(url, headers=auth).json()["fidelity"]
    assert figure["text"] == "q4_K_M agrees with its source on 3 of 4 prompts"
    assert figure["assessment_id"] == older


# -- real models --------------------------------------------------------------------------------


@pytest.fixture
def inference(data_dir):
    """The inference process of this test's data dir, which the job's calls find there."""
    from tuneyard.inference.process import start_inference, stop_inference

    start_inference()
    yield
    stop_inference()


@pytest.mark.backend_free
@pytest.mark.slow
def test_a_tiny_model_as_candidate_judged_by_a_double(client, auth, qa, tiny_base, inference):
    with OpenAIDouble(lambda m: '{"score": 2, "reason": "gibberish"}') as judge:
        request = body(
            qa,
            f"base:{tiny_base}",
            sample={"size": 3, "seed": 1},
            reference_column="completion",
            judge={
                "model": third_party(client, auth, "judge", judge),
                "kind": "score",
                "prompt": "Grade {{ResponseA}} against {{ref_answer}}",
            },
        )
        request["candidates"][0]["params"] = {"max_tokens": 8}
        assessment = run(client, auth, request)
    found = rows(client, auth, assessment["id"])
    assert all(row["status"] == "done" for row in found)
    for row in found:
        answer = row["answers"][0]
        assert answer["completion_tokens"] >= 1 and answer["error"] is None
        graded = [r["messages"][-1]["content"] for r in judge.requests]
        assert any(text.startswith(f"Grade {answer['text']} against") for text in graded)
    summary = assessment["summary"]
    assert summary["judge"]["verdicts_parsed"] == 3
    assert summary["candidates"][0]["metrics"]["exact"]["mean"] == 0


@pytest.mark.backend_free
@pytest.mark.slow
def test_fidelity_compares_a_customized_model_with_its_complete_and_live_models(
    client, auth, qa, tiny_base, made_adapter_dir, inference
):
    from tests.helpers import make_customized, saved
    from tests.vllm_double import VllmDouble
    from tuneyard.db import session_scope
    from tuneyard.models import DeployEnvironment, LiveModel

    customized = make_customized(tiny_base, made_adapter_dir)
    url = f"/api/v1/customized-models/{customized['id']}/fidelity"
    refused = client.post(url, json={"dataset_id": qa}, headers=auth)
    assert refused.status_code == 409 and "save it or deploy it first" in refused.text
    complete = saved(client, auth, customized["id"])
    with VllmDouble(complete["path"]) as vllm:
        # The complete model served as vLLM serves a folder: a live model of it.
        env = client.post(
            "/api/v1/deploy-environments",
            json={"name": "vllm", "kind": "openai", "url": vllm.url},
            headers=auth,
        ).json()
        with session_scope() as session:
            live = LiveModel(
                project_id=session.get(DeployEnvironment, env["id"]).project_id,
                name=f"{complete['name']}_d_abcd_no_quantization",
                tag="tiny",
                environment_id=env["id"],
                source_kind="complete",
                source_id=complete["id"],
                source_name=complete["name"],
                quantization="no_quantization",
                status="live",
                endpoint_url=vllm.url,
                model_id=vllm.model_id,
            )
            session.add(live)
            session.flush()
            live_id = live.id
        accepted = client.post(
            url, json={"dataset_id": qa, "size": 4, "max_tokens": 6}, headers=auth
        )
        assert accepted.status_code == 202, accepted.text
        assert wait_for_job(accepted.json()["job_id"], timeout=300).status == "succeeded"
    assessment = client.get(f"{API}/{accepted.json()['id']}", headers=auth).json()
    stages = assessment["summary"]["fidelity"]["stages"]
    assert [stage["stage"] for stage in stages] == ["complete", "live no_quantization"]
    assert all(stage["compared"] == 4 for stage in stages)
    assert [c["params"]["temperature"] for c in assessment["config"]["candidates"]] == [0, 0, 0]
    found = rows(client, auth, assessment["id"])
    assert all(len(row["answers"]) == 3 and row["status"] == "done" for row in found)
    assert found[0]["answers"][0]["prompt"] == SUMS[0]["prompt"]
    figure = client.get(f"/api/v1/live-models/{live_id}", headers=auth).json()["fidelity"]
    assert figure["assessment_id"] == assessment["id"] and figure["compared"] == 4
    assert figure["text"] == (
        f"no_quantization agrees with its source on {figure['identical']} of 4 prompts"
    )
    exported = client.get(f"{API}/{assessment['id']}/export?format=csv", headers=auth).text
    assert "C_identical" in exported.splitlines()[0]


@pytest.mark.backend_free
@pytest.mark.slow
def test_smollm2_as_a_pairwise_judge_end_to_end(client, auth, qa, smollm2_folder, inference):
    """A real small model judging: whatever it answers is read or counted as unread."""
    registered = client.post(
        "/api/v1/base-models",
        json={"technical_name": "smol", "path": str(smollm2_folder)},
        headers=auth,
    )
    assert registered.status_code == 201, registered.text
    builtin = prompts.BUILTIN_JUDGE_PROMPTS["pairwise"]
    with (
        OpenAIDouble(lambda m: str(2 * number(last_user(m)))) as right,
        OpenAIDouble(lambda m: "I do not know.") as vague,
    ):
        request = body(
            qa,
            third_party(client, auth, "right", right),
            third_party(client, auth, "vague", vague),
            sample={"size": 3},
            judge={
                "model": "base:" + registered.json()["id"],
                "kind": "pairwise",
                "system": builtin["system"],
                "prompt": builtin["prompt"],
                "params": {"max_tokens": 48},
            },
        )
        assessment = run(client, auth, request)
    verdicts = assessment["summary"]["judge"]
    assert verdicts["answers_total"] == 6 and verdicts["judge_errors"] == 0
    assert verdicts["answers_parsed"] + verdicts["unparsed"] == 6
    assert f"verdicts parsed: {verdicts['verdicts_parsed']} of 3" in assessment["summary"]["lines"]
    for row in rows(client, auth, assessment["id"]):
        assert {j["order"] for j in row["judgments"]} == {"AB", "BA"}
        assert all(j["raw"].strip() and j["completion_tokens"] for j in row["judgments"])
        read = [j for j in row["judgments"] if j["verdict"]["value"] is not None]
        assert (row["verdict"]["winner"] is not None) == (len(read) == 2)


def test_a_deploys_check_asks_its_sources_training_dataset(
    client, auth, qa, tiny_base, made_adapter_dir, principal
):
    """The check a deploy queues compares the live model with the customized model it came
    from, on the records of the dataset that model was trained on, greedily."""
    from tests.helpers import make_customized
    from tuneyard.assessment.fidelity import start_live_fidelity
    from tuneyard.db import session_scope
    from tuneyard.models import CustomizedModel, Job, LiveModel, Training

    customized = make_customized(tiny_base, made_adapter_dir)
    env = client.post(
        "/api/v1/deploy-environments",
        json={"name": "vllm", "kind": "openai", "url": "http://127.0.0.1:9/v1"},
        headers=auth,
    ).json()
    with session_scope() as session:
        training = Training(
            project_id=principal.project_id,
            name="made",
            method="sft",
            base_model_id=tiny_base,
            base_model_name="tiny",
            dataset_id=qa,
            dataset_name="qa",
            status="succeeded",
            customized_model_id=customized["id"],
        )
        session.add(training)
        session.flush()
        session.get_one(CustomizedModel, customized["id"]).training_id = training.id
        live = LiveModel(
            project_id=principal.project_id,
            name=f"{customized['name']}_d_abcd_q8_0",
            tag="made",
            environment_id=env["id"],
            source_kind="customized",
            source_id=customized["id"],
            source_name=customized["name"],
            quantization="q8_0",
            status="live",
            endpoint_url="http://127.0.0.1:9/v1",
            model_id="made",
        )
        session.add(live)
        session.flush()
        check = start_live_fidelity(session, principal, live, 16)
        assert session.get_one(Job, check.job_id).kind == "assessment.run"
        check_id, live_id = check.id, live.id
    shown = client.get(f"{API}/{check_id}", headers=auth).json()
    # The dataset has 8 records: all of them, its completions the reference.
    assert shown["dataset_id"] == qa and shown["row_count"] == len(SUMS) == 8
    config = shown["config"]
    assert config["kind"] == "fidelity" and config["reference_column"] == "completion"
    assert [c["model"] for c in config["candidates"]] == [
        f"customized:{customized['id']}",
        f"live:{live_id}",
    ]
    assert [c["stage"] for c in config["candidates"]] == ["customized", "live q8_0"]
    assert all(c["params"]["temperature"] == 0 for c in config["candidates"])
