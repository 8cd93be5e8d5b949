"""Reading ``metrics.jsonl``, the one-JSON-object-per-line log a run appends to (trainer, prcl plot)."""

from __future__ import annotations

import json
from pathlib import Path

from prcl.errors import UserError


def read_records(path: Path, then: str = "") -> tuple[list[dict], bool]:
    """The JSON objects of ``path``, in order, and whether a torn last line was left out.

    A crash or a full disk during an append leaves at most a torn last line, which is skipped; any
    other line that is not JSON is a UserError naming it (``then`` is added to the advice, e.g.
    ", then resume"). Blank lines and lines holding no object are skipped.
    """
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return records, True
            raise UserError(f"{path} line {number} is not JSON; fix or remove that line{then}") from None
        if isinstance(record, dict):
            records.append(record)
    return records, False
