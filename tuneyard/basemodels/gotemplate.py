"""How a conversation renders into a prompt on each side of a deploy: Ollama's Go templates (the
legacy form with {{ .System }}, {{ .Prompt }}, {{ .Response }}, and the `.Messages` form with
range, if/else if, eq/ne/not/and/or/len and variables, as Ollama builds the prompt) and a model's
Jinja chat template. Templates using other Go constructs raise UnsupportedTemplate rather than
being guessed at. Deriving a deployment template and checking parity both render through here.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VARIABLES = ("System", "Prompt", "Response")


class UnsupportedTemplate(Exception):
    """The Go template uses constructs beyond the subset Ollama's templates use."""


def split_actions(template: str) -> list[tuple[str, str]]:
    """Split into ("text", s) and ("action", s), applying {{- and -}} whitespace trimming.

    One pass over the text: an action runs from a "{{" to the first "}}" after it, so each
    character is looked at a bounded number of times whatever the input (a template is user
    text, and a pattern with nested optional parts backtracks for minutes on "{{" and spaces).
    """
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    while (start := template.find("{{", pos)) >= 0:
        end = template.find("}}", start + 2)
        if end < 0:
            break
        text = template[pos:start]
        if trim_next:
            text = text.lstrip()
        inner = template[start + 2 : end]
        trim_before = inner.startswith("-")
        if trim_before:
            text = text.rstrip()
            inner = inner[1:]
        inner = inner.lstrip()
        trim_next = inner.endswith("-")
        if trim_next:
            inner = inner[:-1]
        out.append(("text", text))
        out.append(("action", inner.rstrip()))
        pos = end + 2
    tail = template[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


# What Ollama hands a template (template.Execute): the legacy values, or with `.Messages` the
# whole conversation; names beyond these are reported as not checked rather than guessed.
TOP_FIELDS = {
    "System": "",
    "Prompt": "",
    "Response": "",
    "Suffix": "",
    "Messages": [],
    "Tools": [],
    "Think": False,
    "ThinkLevel": "",
    "IsThinkSet": False,
}
MESSAGE_FIELDS = {"Role": "", "Content": "", "Thinking": "", "ToolCalls": [], "ToolName": ""}
# Nesting deeper than any real template; a crafted one must not exhaust the Python stack.
MAX_NESTING = 32


class _StopAtResponse(Exception):
    """A legacy template's last turn ends where the model's answer begins."""


@dataclass
class _Block:
    """An if/range body: a list of text pieces and actions, with its else branch."""

    head: str
    body: list[Any]
    orelse: list[Any] | None = None


def _tokens(action: str) -> list[str]:
    """Words of an action: strings, parentheses, `:=`, `=`, `,`, fields and names."""
    out: list[str] = []
    i = 0
    while i < len(action):
        ch = action[i]
        if ch.isspace():
            i += 1
        elif ch in "(),":
            out.append(ch)
            i += 1
        elif ch == '"':
            end = i + 1
            while end < len(action) and action[end] != '"':
                end += 2 if action[end] == "\\" else 1
            if end >= len(action):
                raise UnsupportedTemplate(action)
            out.append(action[i : end + 1])
            i = end + 1
        elif action.startswith(":=", i):
            out.append(":=")
            i += 2
        else:
            end = i
            while end < len(action) and not action[end].isspace() and action[end] not in '(),"':
                if action.startswith(":=", end):
                    break
                end += 1
            out.append(action[i:end])
            i = end
    return out


def _parse(pieces: list[tuple[str, str]]) -> list[Any]:
    """Nest the actions into blocks: [text | action | _Block]."""
    root: list[Any] = []
    stack: list[_Block] = []
    current = root
    for kind, value in pieces:
        if kind == "text":
            if value:
                current.append(("text", value))
            continue
        words = value.split(None, 1)
        if not words or value.startswith("/*"):
            continue
        head = words[0]
        if head in ("if", "range"):
            if len(stack) >= MAX_NESTING:
                raise UnsupportedTemplate(value)
            block = _Block(value, [])
            current.append(block)
            stack.append(block)
            current = block.body
        elif head == "else":
            if not stack or stack[-1].orelse is not None:
                raise UnsupportedTemplate(value)
            block = stack[-1]
            block.orelse = []
            rest = value[4:].strip()
            if rest:  # else if ...: an if nested in the else branch, closed by the same end
                if not rest.startswith("if ") or stack[-1].head.startswith("range"):
                    raise UnsupportedTemplate(value)
                inner = _Block("elif " + rest[3:], [])
                block.orelse.append(inner)
                stack.append(inner)
                current = inner.body
            else:
                current = block.orelse
        elif head == "end":
            if not stack:
                raise UnsupportedTemplate(value)
            while stack and stack.pop().head.startswith("elif "):
                pass
            top = stack[-1] if stack else None
            current = root if top is None else (top.orelse if top.orelse is not None else top.body)
        else:
            current.append(("action", value))
    if stack:
        raise UnsupportedTemplate(stack[-1].head)
    return root


class _Renderer:
    def __init__(self, values: dict[str, Any], stop_at_response: bool):
        self.root = {**TOP_FIELDS, **values}
        self.stop_at_response = stop_at_response
        self.out: list[str] = []

    def field(self, dot: Any, name: str, action: str) -> Any:
        fields = MESSAGE_FIELDS if "Role" in dot else TOP_FIELDS
        if name not in fields:
            raise UnsupportedTemplate(action)
        return dot.get(name, fields[name])

    def arg(self, words: list[str], pos: int, dot: Any, env: dict[str, Any], action: str):
        """One argument starting at words[pos]: its value and the position after it."""
        word = words[pos]
        if word == "(":
            value, pos = self.call(words, pos + 1, dot, env, action)
            if pos >= len(words) or words[pos] != ")":
                raise UnsupportedTemplate(action)
            return value, pos + 1
        if word.startswith('"'):
            return json.loads(word), pos + 1
        if word in ("true", "false"):
            return word == "true", pos + 1
        if word.isdigit():
            return int(word), pos + 1
        if word == ".":
            return dot, pos + 1
        if word.startswith("."):
            return self.field(dot, word[1:], action), pos + 1
        if word.startswith("$"):
            name, _, rest = word.partition(".")
            if name == "$":
                base = self.root
            elif name in env:
                base = env[name]
            else:
                raise UnsupportedTemplate(action)
            if rest:
                if not isinstance(base, dict):
                    raise UnsupportedTemplate(action)
                return self.field(base, rest, action), pos + 1
            return base, pos + 1
        raise UnsupportedTemplate(action)

    def call(self, words: list[str], pos: int, dot: Any, env: dict[str, Any], action: str):
        """A command: a function with its arguments, or one argument."""
        if pos >= len(words):
            raise UnsupportedTemplate(action)
        name = words[pos]
        if name not in ("eq", "ne", "not", "and", "or", "len"):
            return self.arg(words, pos, dot, env, action)
        pos += 1
        args = []
        while pos < len(words) and words[pos] != ")":
            value, pos = self.arg(words, pos, dot, env, action)
            args.append(value)
        if not args or (name in ("not", "len") and len(args) != 1):
            raise UnsupportedTemplate(action)
        return self.apply(name, args), pos

    @staticmethod
    def apply(name: str, args: list[Any]) -> Any:
        if name == "eq":
            return any(args[0] == other for other in args[1:])
        if name == "ne":
            return len(args) == 2 and args[0] != args[1]
        if name == "not":
            return not args[0]
        if name == "len":
            return len(args[0])
        for value in args:
            if bool(value) == (name == "or"):
                return value
        return args[-1]

    def pipeline(self, action: str, dot: Any, env: dict[str, Any]) -> Any:
        words = _tokens(action)
        value, pos = self.call(words, 0, dot, env, action)
        if pos != len(words):
            raise UnsupportedTemplate(action)
        return value

    def run(self, nodes: list[Any], dot: Any, env: dict[str, Any]) -> None:
        for node in nodes:
            if isinstance(node, _Block):
                self.block(node, dot, env)
                continue
            kind, value = node
            if kind == "text":
                self.out.append(value)
                continue
            words = _tokens(value)
            if len(words) > 2 and words[0].startswith("$") and words[1] in (":=", "="):
                if words[1] == "=" and words[0] not in env:
                    raise UnsupportedTemplate(value)
                env[words[0]] = self.pipeline(" ".join(words[2:]), dot, env)
                continue
            if words in ([".Response"], ["$.Response"]) and self.stop_at_response:
                raise _StopAtResponse
            result = self.pipeline(value, dot, env)
            if not isinstance(result, (str, int)) or isinstance(result, bool):
                raise UnsupportedTemplate(value)
            self.out.append(str(result))

    def block(self, block: _Block, dot: Any, env: dict[str, Any]) -> None:
        keyword, _, rest = block.head.partition(" ")
        if keyword in ("if", "elif"):
            taken = self.pipeline(rest, dot, env)
            scope = dict(env)
            self.run(block.body if taken else (block.orelse or []), dot, scope)
            env.update({k: v for k, v in scope.items() if k in env})
            return
        names: list[str] = []
        if ":=" in rest:
            declared, _, rest = rest.partition(":=")
            names = [n.strip() for n in declared.split(",")]
            if not 1 <= len(names) <= 2 or not all(n.startswith("$") for n in names):
                raise UnsupportedTemplate(block.head)
        items = self.pipeline(rest, dot, env)
        if not isinstance(items, list):
            raise UnsupportedTemplate(block.head)
        if not items:
            self.run(block.orelse or [], dot, dict(env))
        for index, item in enumerate(items):
            scope = dict(env)
            if len(names) == 2:
                scope[names[0]], scope[names[1]] = index, item
            elif names:
                scope[names[0]] = item
            self.run(block.body, item, scope)
            env.update({k: v for k, v in scope.items() if k in env})


def uses_messages(template: str) -> bool:
    """Ollama renders the whole conversation through `.Messages` when the template names it."""
    return any(kind == "action" and ".Messages" in value for kind, value in split_actions(template))


def render_go_template(template: str, values: dict[str, Any]) -> str:
    """Render the subset of Go templates Ollama's templates use.

    Legacy templates stop at {{ .Response }} like a generation does; with `.Messages` the
    whole template renders with an empty response, as Ollama does.
    """
    pieces = split_actions(template)
    tree = _parse(pieces)
    messages = uses_messages(template)
    renderer = _Renderer(values, stop_at_response=not messages and "Response" not in values)
    with contextlib.suppress(_StopAtResponse):
        renderer.run(tree, renderer.root, {"$": renderer.root})
    return "".join(renderer.out)


def render_ollama_prompt(template: str, messages: list[dict[str, str]]) -> str:
    """The prompt Ollama builds from a chat conversation (template.Execute, read from its
    source): consecutive messages of one role merge; `.System` joins the system messages;
    a legacy template renders once per turn and the last turn stops at the answer."""
    collated: list[dict[str, str]] = []
    for message in messages:
        if collated and collated[-1]["role"] == message["role"]:
            collated[-1]["content"] += "\n\n" + message["content"]
        else:
            collated.append(dict(message))
    if uses_messages(template):
        system = "\n\n".join(m["content"] for m in collated if m["role"] == "system")
        listed = [{"Role": m["role"], "Content": m["content"]} for m in collated]
        return render_go_template(template, {"System": system, "Messages": listed})
    # Ollama appends {{ .Response }} to a legacy template that lacks it; appended here as
    # text, so an unclosed action in the template stays text as Go would refuse it.
    answers = any(
        kind == "action" and "Response" in value for kind, value in split_actions(template)
    )

    def legacy(values: dict[str, str]) -> str:
        rendered = render_go_template(template, values)
        return rendered if answers else rendered + values.get("Response", "")

    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}
    for message in collated:
        role, content = message["role"], message["content"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                out.append(legacy(turn))
                turn = {"System": "", "Prompt": "", "Response": ""}
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                out.append(legacy(turn))
                turn = {"System": "", "Prompt": "", "Response": ""}
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    last = {k: v for k, v in turn.items() if k != "Response"}
    out.append(legacy(last))
    return "".join(out)


def special_tokens(folder: Path) -> dict[str, str]:
    import json

    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    tokens = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    return tokens


def render_chat_prompt(chat, messages: list[dict[str, str]], tokens: dict[str, str]) -> str | None:
    """The chat template's prompt for a conversation, or None when the template refuses it
    (many raise for a system message or roles out of order)."""
    from jinja2 import TemplateError

    try:
        return chat.render(messages=messages, add_generation_prompt=True, **tokens)
    except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError):
        return None


def same_prompt(expected: str, rendered: str, bos: str | None) -> bool:
    """A template that writes the BOS token and one that leaves it to the tokenizer make the
    same prompt; some models (SmolLM2) use a chat marker as BOS, so both forms count."""
    if rendered == expected:
        return True
    return bool(bos) and expected.startswith(bos or "") and rendered == expected[len(bos or "") :]
