"""A training's checkpoints: the folders the trainer keeps in its working folder, by step."""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_PREFIX = "checkpoint-"


def checkpoints(work_dir: Path) -> list[Path]:
    root = work_dir / "checkpoints"
    if not root.exists():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir()
        and p.name.startswith(CHECKPOINT_PREFIX)
        and (p / "trainer_state.json").exists()
    ]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))
