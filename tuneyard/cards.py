"""Model cards: a dict kept on the model's row, and the same data as README.md (YAML front
matter and a readable body) inside the model's folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from tuneyard.storage import atomic_file


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks (never whole into memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def folder_size(path: Path) -> int:
    """Bytes of every file under `path` (stat follows links: a hub snapshot links to blobs)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render_readme(card: dict[str, Any]) -> str:
    card = json.loads(json.dumps(card, default=str))  # plain types only in YAML
    front = yaml.safe_dump(card, sort_keys=False, allow_unicode=True)
    lines = [f"---\n{front}---", "", f"# {card.get('name', 'Model')}", ""]
    if card.get("kind"):
        lines.append(f"A {card['kind']} model made by Tuneyard.")
        lines.append("")
    for section in ("lineage", "training", "metrics", "save", "sizes"):
        value = card.get(section)
        if not value:
            continue
        lines.append(f"## {section.capitalize()}")
        lines.append("")
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, dict):
                    inner = ", ".join(f"{k}={_fmt(v)}" for k, v in item.items())
                    lines.append(f"- **{key}**: {inner}")
                else:
                    lines.append(f"- **{key}**: {_fmt(item)}")
        else:
            lines.append(_fmt(value))
        lines.append("")
    return "\n".join(lines)


def write_readme(folder: Path, card: dict[str, Any]) -> None:
    with atomic_file(folder / "README.md", "w") as handle:
        handle.write(render_readme(card))


def read_front_matter(readme: Path) -> dict[str, Any]:
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    return yaml.safe_load(text[4:end]) or {} if end > 0 else {}
