"""`tuneyard chat` against a real server: one-shot and interactive, streamed over the chat API;
the server's inference process stops with the server."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from tests.helpers import flat
from tuneyard.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_interactive_conversation_is_stored_and_the_process_stopped(cli, api_server, tiny_base):
    from tuneyard.inference.process import running_inference

    result = runner.invoke(
        app,
        ["chat", "tiny", "--temperature", "0", "--max-tokens", "6"],
        input="Hello there\nAnd again\n/exit\n",
    )
    assert result.exit_code == 0, result.output
    assert "Chatting with tiny" in flat(result.output)
    assert len(re.findall(r"first (?:token )?after \d", flat(result.output))) == 2

    sessions = runner.invoke(app, ["chat", "nope", "--prompt", "hi"])
    assert sessions.exit_code == 1
    assert "No model 'nope'" in flat(sessions.output)
    api_server.stop()
    assert running_inference() is None


@pytest.mark.slow
def test_one_shot_prints_the_answer(cli, tiny_base):
    from tuneyard.auth.service import local_principal
    from tuneyard.chat.service import list_sessions, session_messages
    from tuneyard.db import session_scope

    result = runner.invoke(
        app,
        ["chat", "base:tiny", "--prompt", "Hello there", "--temperature", "0", "--max-tokens", "6"],
    )
    assert result.exit_code == 0, result.output
    with session_scope() as session:
        [chat], _ = list_sessions(session, local_principal(session))
        messages = session_messages(session, chat)
        assert [m.role for m in messages] == ["user", "assistant"]
        assert messages[1].content in result.stdout
