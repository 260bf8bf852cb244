"""The container image (Dockerfile) and the team's compose file (compose.yaml) parse, and
name only `tuneyard` commands, options, settings and health routes that exist."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer.main
import yaml

from tuneyard.api import create_app
from tuneyard.cli import app as cli_app
from tuneyard.config import Settings

pytestmark = pytest.mark.nodb

ROOT = Path(__file__).resolve().parent.parent
SETTING = re.compile(r"\bTUNEYARD_[A-Z0-9_]+\b")
HEALTH_PATH = re.compile(r"/api/v1/[A-Za-z0-9_/]+")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction, continuation lines joined."""
    instructions, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def as_words(command: str | list[str]) -> list[str]:
    """A command in exec form (a JSON list) or shell form, as words."""
    if isinstance(command, list):
        return command
    if command.startswith("["):
        return json.loads(command)
    return shlex.split(command)


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def is_group(command) -> bool:
    return hasattr(command, "commands")


def unknown_in_cli(words: list[str]) -> list[str]:
    """What in a `tuneyard ...` command line the CLI does not know: commands and options."""
    assert words[0] == "tuneyard", words
    command = typer.main.get_command(cli_app)
    path = ["tuneyard"]
    problems = []
    for word in words[1:]:
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            known = {
                opt for param in command.params for opt in (*param.opts, *param.secondary_opts)
            }
            if option not in known:
                problems.append(f"`{' '.join(path)}` has no option {option}")
        elif is_group(command):
            sub = command.commands.get(word)
            if sub is None:
                return [*problems, f"`{' '.join(path)}` has no command {word}"]
            command = sub
            path.append(word)
    if is_group(command):
        problems.append(f"`{' '.join(path)}` is a group, not a command")
    return problems


def named_commands() -> list[tuple[str, list[str]]]:
    """Every `tuneyard` command line the image and the compose file run."""
    found = []
    for keyword, rest in dockerfile_instructions():
        if keyword in ("CMD", "ENTRYPOINT"):
            found.append((f"Dockerfile {keyword}", as_words(rest)))
    for name, service in compose()["services"].items():
        for key in ("command", "entrypoint"):
            if key in service:
                found.append((f"compose service {name}", as_words(service[key])))
    return [(where, words) for where, words in found if words and words[0] == "tuneyard"]


class TestCommands:
    def test_both_files_run_tuneyard(self):
        places = {where for where, _words in named_commands()}
        assert "Dockerfile CMD" in places
        assert {f"compose service {name}" for name in ("migrate", "api", "worker")} <= places

    @pytest.mark.parametrize("where,words", named_commands(), ids=lambda value: str(value))
    def test_command_exists(self, where, words):
        assert unknown_in_cli(words) == [], where

    def test_a_wrong_name_is_caught(self):
        assert unknown_in_cli(["tuneyard", "db", "upgrad"]) == [
            "`tuneyard db` has no command upgrad"
        ]
        assert unknown_in_cli(["tuneyard", "serve", "--no-workers"]) == [
            "`tuneyard serve` has no option --no-workers"
        ]
        assert unknown_in_cli(["tuneyard", "db"]) == ["`tuneyard db` is a group, not a command"]


class TestSettings:
    def named(self) -> dict[str, set[str]]:
        texts = {
            "Dockerfile": (ROOT / "Dockerfile").read_text(),
            "compose.yaml": (ROOT / "compose.yaml").read_text(),
        }
        return {where: set(SETTING.findall(text)) for where, text in texts.items()}

    def test_every_setting_named_exists(self):
        prefix = Settings.model_config["env_prefix"]
        real = {prefix + field.upper() for field in Settings.model_fields}
        for where, names in self.named().items():
            assert names - real == set(), f"{where} names settings Tuneyard does not have"

    def test_the_settings_a_team_needs_are_set(self):
        assert "TUNEYARD_DATA_DIR" in self.named()["Dockerfile"]
        for name in ("api", "worker", "migrate"):
            environment = compose()["services"][name]["environment"]
            assert {"TUNEYARD_DATABASE_URL", "TUNEYARD_DATA_DIR"} <= set(environment)


class TestImage:
    def test_runs_as_a_user_with_a_data_volume_and_a_health_check(self):
        instructions = dockerfile_instructions()
        keywords = [keyword for keyword, _rest in instructions]
        assert instructions[0] == ("FROM", "python:3.11-slim AS build")
        assert keywords.count("USER") == 1 and dict(instructions)["USER"] != "root"
        assert keywords.index("USER") < keywords.index("CMD")
        assert ("VOLUME", "/data") in instructions
        assert ("EXPOSE", "8000") in instructions
        env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
        assert "TUNEYARD_DATA_DIR=/data" in env

    def test_health_routes_named_exist(self):
        routes = set(create_app().openapi()["paths"])
        for name in ("Dockerfile", "compose.yaml", "README.md"):
            for path in HEALTH_PATH.findall((ROOT / name).read_text()):
                if "health" in path:
                    assert path in routes, f"{name} probes {path}, which the API does not serve"


class TestCompose:
    def test_services_start_in_order(self):
        services = compose()["services"]
        assert set(services) == {"postgres", "migrate", "api", "worker"}
        assert "pg_isready" in " ".join(as_words(services["postgres"]["healthcheck"]["test"]))
        assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
        for name in ("api", "worker"):
            condition = services[name]["depends_on"]["migrate"]["condition"]
            assert condition == "service_completed_successfully"
        assert services["worker"]["deploy"]["replicas"] == 2
        assert "8000:8000" in services["api"]["ports"]

    def test_every_process_shares_the_database_and_data_dir(self):
        services = compose()["services"]
        postgres = services["postgres"]["environment"]
        for name in ("migrate", "api", "worker"):
            service = services[name]
            environment = service["environment"]
            data_dir = environment["TUNEYARD_DATA_DIR"]
            assert f"tuneyard-data:{data_dir}" in service["volumes"]
            url = environment["TUNEYARD_DATABASE_URL"]
            assert url.startswith(f"postgresql+psycopg://{postgres['POSTGRES_USER']}:")
            assert url.endswith(f"@postgres:5432/{postgres['POSTGRES_DB']}")
        assert set(compose()["volumes"]) == {"postgres-data", "tuneyard-data"}
