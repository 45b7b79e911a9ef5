"""Line readers shared by the loaders: numbered, UTF-8 checked, errors naming `file:line`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for each non-blank line of a UTF-8 text file."""
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, raw in enumerate(f, start=1):
                line = raw.strip()
                if line:
                    yield lineno, line
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text: {exc}") from exc


def jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj
