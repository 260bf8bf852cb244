"""The deploy quantizations: the one list of their names, what each means, and how each
serving tool's quantizer calls it. The API schema, the CLI, the console and the targets read
it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneyard.errors import Invalid


@dataclass(frozen=True)
class Quantization:
    name: str
    description: str
    # The `quantize` value of Ollama's create API; None leaves the key out (weights as sent).
    ollama: str | None
    # llama.h's llama_ftype for llama.cpp's quantizer; None needs no quantize step.
    llama_ftype: str | None


NO_QUANTIZATION = "no_quantization"

_ALL = (
    Quantization(NO_QUANTIZATION, "the weights as saved (largest, most faithful)", None, None),
    Quantization(
        "q8_0", "8-bit, about half the size, nearly lossless", "q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0"
    ),
    Quantization(
        "q4_K_M",
        "4-bit medium, about a quarter the size, a good default",
        "q4_K_M",
        "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    ),
    Quantization(
        "q4_K_S",
        "4-bit small, the smallest, a little less accurate",
        "q4_K_S",
        "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    ),
)
BY_NAME: dict[str, Quantization] = {q.name: q for q in _ALL}
QUANTIZATIONS: tuple[str, ...] = tuple(BY_NAME)


def names_text() -> str:
    """The names as a sentence reads them: "no_quantization, q8_0, q4_K_M or q4_K_S"."""
    return f"{', '.join(QUANTIZATIONS[:-1])} or {QUANTIZATIONS[-1]}"


def get_quantization(name: str) -> Quantization:
    """The quantization of that exact name; another spelling is refused, not guessed."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise Invalid(
            f"Unknown quantization '{name}'; use one of: {', '.join(QUANTIZATIONS)}."
        ) from None


def check_quantization(value: str) -> str:
    return get_quantization(value).name
