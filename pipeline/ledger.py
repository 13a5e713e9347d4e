"""Per-scene record of finished tiles: what makes a scan resumable.

``OUT/<scene>/_irscan/tiles.jsonl`` is append-only, one JSON object per finished tile
(``tile``, ``status`` in done/skipped/failed, ``attempts``, ``target_px``, ``error``).
A tile is recorded only after its chunk is fully written, and each append is flushed and
fsynced, so after a crash (even SIGKILL) every recorded tile is on disk; an unrecorded
tile is simply redone (its chunk is overwritten whole, which is idempotent). A torn last
line, from a kill in the middle of an append, is ignored.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["TileLedger", "STATE_DIR"]

log = logging.getLogger(__name__)

STATE_DIR = "_irscan"
FINAL_STATUSES = ("done", "skipped")


class TileLedger:
    """The finished-tile log of one scene's output folder."""

    def __init__(self, scene_out_dir: str | os.PathLike[str]) -> None:
        self.path = Path(scene_out_dir) / STATE_DIR / "tiles.jsonl"

    def load(self) -> dict[str, dict[str, Any]]:
        """Latest record per tile id (later lines win)."""
        records: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return records
        with self.path.open("r", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s: line %d is torn (interrupted write); ignored", self.path, number)
                    continue
                records[record["tile"]] = record
        return records

    def finished_ids(self) -> set[str]:
        """Tiles that need no more work (done or skipped; failed tiles are retried)."""
        return {tid for tid, rec in self.load().items() if rec.get("status") in FINAL_STATUSES}

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
