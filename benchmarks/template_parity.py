"""Template parity on hostile templates: Tuneyard's one-pass action reader against the regular
expression it replaced.

Both split the same templates into text and `{{ ... }}` actions, in this process, one after
the other: an unclosed action ("{{" and n spaces, the worst case of the old pattern, whose
lazy middle group and the optional spaces around it backtrack over every split of the
spaces), and a well-formed template of the same length (an Ollama chat template repeated).
The old pattern runs only up to `--max-old` characters: past that it takes minutes.

    python benchmarks/template_parity.py [--max-old 2000]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from tuneyard.basemodels.gotemplate import split_actions  # noqa: E402
from tuneyard.basemodels.template import FAMILIES  # noqa: E402

OLD_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
SIZES = (250, 500, 1000, 2000, 4000, 65536)


def old_split(template: str) -> int:
    return sum(1 for _ in OLD_ACTION.finditer(template))


def timed(function, template: str) -> float:
    started = time.perf_counter()
    function(template)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-old", type=int, default=2000, help="longest input for the old one")
    args = parser.parse_args()
    chat = FAMILIES[1].template
    print(f"{'input':>10} {'chars':>7} {'one pass (s)':>13} {'old pattern (s)':>16} {'ratio':>9}")
    for size in SIZES:
        for label, template in (
            ("unclosed", "{{" + " " * size),
            ("chat", (chat * (size // len(chat) + 1))[:size]),
        ):
            new = timed(split_actions, template)
            if size <= args.max_old:
                old = timed(old_split, template)
                print(f"{label:>10} {size:>7} {new:>13.6f} {old:>16.6f} {old / new:>8.2f}x")
            else:
                print(f"{label:>10} {size:>7} {new:>13.6f} {'(skipped)':>16} {'':>9}")


if __name__ == "__main__":
    main()
