"""A server that is not there: how long each of Tuneyard's reachability checks takes to say so,
against one plain HTTP request to the same closed port.

Each check is what a request runs before it answers 503: the model hub's probe (registering a
base model from the hub, and before a push), Ollama's ping, an OpenAI-compatible server's model
list, a llama.cpp server's model list, and a third-party model's test. The baseline is one
`httpx.get` of the same address, with no retry and no wait: the least any HTTP check can take.
A check that retried, backed off or waited out its timeout would show as a large ratio.

Every check must end in Unavailable (the API's 503) or the run stops. The two sides alternate,
`--rounds` times each, in this process, so that a busy machine slows both; the medians are
printed with their ratio.

    python benchmarks/unreachable.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))


class Unreachable(Exception):
    """The third-party test's failure, raised so that it is measured like the others."""


def closed_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def checks(url: str) -> dict[str, Callable[[], object]]:
    """Each check, ready to run against `url`, where nothing listens."""
    os.environ["HF_ENDPOINT"] = url
    os.environ["TUNEYARD_DATA_DIR"] = tempfile.mkdtemp(prefix="tuneyard-bench-")
    from tuneyard.api import prepare
    from tuneyard.auth.service import local_principal
    from tuneyard.basemodels.hub import probe
    from tuneyard.complete.push import probe_for_push
    from tuneyard.config import get_settings
    from tuneyard.db import session_scope
    from tuneyard.deploy.llamacpp import list_served_models
    from tuneyard.deploy.ollama import OllamaClient
    from tuneyard.deploy.openai_compat import OpenAICompatClient
    from tuneyard.thirdparty.service import create_third_party, test_third_party

    prepare(announce=lambda _text: None)
    with session_scope() as session:
        principal = local_principal(session)
        create_third_party(
            session,
            principal,
            name="remote",
            provider="openai-compatible",
            model_name="m",
            base_url=f"{url}/v1",
        )
    timeout = get_settings().hub_timeout_seconds

    def third_party_test() -> None:
        with session_scope() as session:
            result = test_third_party(session, principal, "remote")
        # The test answers a failure as a result; the API shows it with ok false.
        if result["ok"] or not result["detail"].startswith("Cannot reach"):
            raise AssertionError(result)
        raise Unreachable(result["detail"])

    return {
        "hub probe (register)": lambda: probe("HuggingFaceTB/SmolLM2-135M-Instruct", timeout),
        "hub probe (push)": lambda: probe_for_push(timeout),
        "Ollama ping": lambda: OllamaClient(url, timeout=5).ping(),
        "OpenAI-compatible models": lambda: OpenAICompatClient(f"{url}/v1").models(),
        "llama.cpp server models": lambda: list_served_models(url),
        "third-party model test": third_party_test,
    }


def timed_failure(check: Callable[[], object]) -> float:
    """Seconds until `check` reports the server unreachable."""
    from tuneyard.errors import Unavailable

    started = time.perf_counter()
    try:
        check()
    except (Unavailable, Unreachable):
        return time.perf_counter() - started
    raise AssertionError("the check did not report the closed port as unreachable")


def timed_plain_get(url: str) -> float:
    import httpx

    started = time.perf_counter()
    try:
        httpx.get(url, timeout=5)
    except httpx.ConnectError:
        return time.perf_counter() - started
    raise AssertionError(f"something answers at {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="runs of each side")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{closed_port()}"
    print(f"{'check':>26} {'Tuneyard (ms)':>14} {'plain GET (ms)':>15} {'ratio':>8}")
    for label, check in checks(url).items():
        timed_failure(check)  # the first call imports what the check needs
        ours, plain = [], []
        for _ in range(args.rounds):
            ours.append(timed_failure(check))
            plain.append(timed_plain_get(url))
        ours_ms, plain_ms = statistics.median(ours) * 1000, statistics.median(plain) * 1000
        print(f"{label:>26} {ours_ms:>14.2f} {plain_ms:>15.2f} {ours_ms / plain_ms:>7.2f}x")


if __name__ == "__main__":
    main()
