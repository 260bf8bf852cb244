"""GRPO reward functions: the built-ins, and a user's function loaded from an uploaded file.

A reward function gets the sampled completions (and the dataset's columns as keyword lists,
e.g. `answer`) and returns one float per completion. An uploaded file defines
`def reward(completions: list[str], **columns) -> list[float]`.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

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


def load_reward_file(path: Path) -> Callable:
    spec = importlib.util.spec_from_file_location(f"tuneyard_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    func = getattr(module, "reward", None)
    if not callable(func):
        raise ValueError(f"{path.name} defines no function `reward(completions, **columns)`")

    def reward(completions, **columns):
        texts = [completion_text(c) for c in completions]
        scores = [float(s) for s in func(texts, **columns)]
        if len(scores) != len(texts):
            raise ValueError(f"{path.name}: reward returned {len(scores)} scores for {len(texts)}")
        return scores

    reward.__name__ = f"file_{path.stem}"
    return reward


def build_reward_functions(params: GRPOParams, reward_files: dict[str, str]) -> list[Callable]:
    functions = []
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
            functions.append(load_reward_file(Path(reward_files[name.removeprefix("file:")])))
    return functions
