"""GRPO reward functions: the built-ins, and a user's function from an uploaded file.

A reward function gets the sampled completions (and the dataset's columns as keyword lists,
e.g. `answer`) and returns one float per completion. An uploaded file defines
`def reward(completions: list[str], **columns) -> list[float]`; it runs in a process of its
own (tuneyard.training.code_process) and gets the completions' text and the columns that are
plain data (the prompts, the dataset's fields).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneyard.errors import AppError
from tuneyard.training.code_process import CodeProcess
from tuneyard.training.params import GRPOParams

NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")


def completion_text(completion) -> str:
    """TRL passes conversational completions as message lists, plain ones as strings."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


def answer_match(completions, answer=None, **_):
    """1.0 when the completion contains the record's answer (case and space-insensitive)."""
    if answer is None:
        raise ValueError("answer_match needs an `answer` field in the dataset")
    return [
        1.0 if _normalise(str(expected)) in _normalise(completion_text(c)) else 0.0
        for c, expected in zip(completions, answer, strict=True)
    ]


def numeric_match(completions, answer=None, **_):
    """1.0 when the last number in the completion equals the record's numeric answer."""
    if answer is None:
        raise ValueError("numeric_match needs an `answer` field in the dataset")
    scores = []
    for completion, expected in zip(completions, answer, strict=True):
        found = NUMBER.findall(completion_text(completion))
        try:
            scores.append(
                1.0
                if found and abs(float(found[-1].replace(",", ".")) - float(expected)) < 1e-6
                else 0.0
            )
        except ValueError:
            scores.append(0.0)
    return scores


def format_regex(pattern: str) -> Callable:
    compiled = re.compile(pattern)

    def reward(completions, **_):
        return [1.0 if compiled.fullmatch(completion_text(c)) else 0.0 for c in completions]

    reward.__name__ = "format_regex"
    return reward


def length_penalty(target: int) -> Callable:
    def reward(completions, **_):
        return [-max(0, len(completion_text(c)) - target) / target for c in completions]

    reward.__name__ = "length_penalty"
    return reward


def _plain(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


class UploadedReward:
    """A reward file's `reward`, called in a process of its own that lives as long as the
    training; the scores it sends are checked before the trainer sees them."""

    def __init__(self, path: Path, scratch: Path):
        self.path = path
        self.scratch = scratch
        self.__name__ = f"file_{path.stem}"
        self._process: CodeProcess | None = None

    def _started(self) -> CodeProcess:
        if self._process is None:
            script = self.scratch / "rewards" / self.path.name
            script.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.path, script)
            process = CodeProcess("reward", self.scratch, f"reward file {self.path.stem}")
            self._process = process
            process.start(
                {
                    "name": self.path.stem,
                    "module": f"tuneyard_reward_{self.path.stem}",
                    "script": str(script),
                }
            )
            ready = process.receive()
            if "error" in ready:
                raise AppError(f"Reward file {self.path.stem}: {str(ready['error'])[:2000]}")
        return self._process

    def __call__(self, completions, **columns) -> list[float]:
        texts = [completion_text(c) for c in completions]
        process = self._started()
        plain = {name: value for name, value in columns.items() if _plain(value)}
        process.send({"completions": texts, "columns": plain})
        reply = process.receive()
        if "error" in reply:
            raise AppError(f"Reward file {self.path.stem} failed: {str(reply['error'])[:2000]}")
        scores = reply.get("value")
        if (
            not isinstance(scores, list)
            or len(scores) != len(texts)
            or not all(isinstance(s, int | float) and not isinstance(s, bool) for s in scores)
        ):
            count = len(scores) if isinstance(scores, list) else "no"
            raise AppError(
                f"Reward file {self.path.stem} must return one number per completion; "
                f"it returned {count} values for {len(texts)} completions."
            )
        return [float(s) for s in scores]

    def close(self) -> None:
        if self._process is not None:
            self._process.close()
            self._process = None


def build_reward_functions(
    params: GRPOParams, reward_files: dict[str, str], scratch: Path
) -> list[Callable]:
    functions: list[Callable] = []
    for name in params.rewards:
        if name == "answer_match":
            functions.append(answer_match)
        elif name == "numeric_match":
            functions.append(numeric_match)
        elif name == "format_regex":
            functions.append(format_regex(params.format_regex))
        elif name == "length_penalty":
            functions.append(length_penalty(params.length_target))
        else:
            path = Path(reward_files[name.removeprefix("file:")])
            functions.append(UploadedReward(path, scratch))
    return functions


def close_uploaded_rewards(functions: list[Callable]) -> None:
    """End the processes of the uploaded reward functions among `functions`."""
    for function in functions:
        if isinstance(function, UploadedReward):
            function.close()
