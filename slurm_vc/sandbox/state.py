"""The sandbox's record of what ``up`` created, written *before* each step so ``down`` can undo any prefix."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class SandboxState:
    """A small JSON document at ``<base>/state.json``; every change is written at once (atomically)."""

    def __init__(self, path: Path, data: dict[str, Any] | None = None):
        self.path = path
        self.data: dict[str, Any] = data if data is not None else {}

    @classmethod
    def load(cls, path: Path) -> SandboxState:
        """The recorded state, or an empty one when there is none (or it is unreadable)."""
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        return cls(path, data)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def record_proc(self, role: str, ref: dict) -> None:
        """Remember a started process under ``procs[role]``."""
        self.data.setdefault("procs", {})[role] = ref
        self.save()

    def add_to(self, key: str, item: str) -> None:
        """Append ``item`` to the list ``key`` (once)."""
        items = self.data.setdefault(key, [])
        if item not in items:
            items.append(item)
        self.save()
