"""The replay state file: per source, what the target has confirmed, so a rerun skips it.

Written atomically (temporary file, fsync, rename) a few times a second while publishing. A rerun
republishes what was published but not yet confirmed when the previous run stopped: those messages
are "in doubt" (the broker may or may not have them), and the state file records how many there
were at most, so the rerun can say so.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bridge.errors import ConfigError


@dataclass
class SourceProgress:
    confirmed_seq: int = 0  # every record up to this archive sequence is confirmed by the target
    published_seq: int = 0  # nothing past this archive sequence has been handed to the target (written ahead)


@dataclass
class ReplayState:
    path: Path | None
    sources: dict[str, SourceProgress] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | None) -> ReplayState:
        if path is None:
            return cls(None)
        p = Path(path)
        if not p.exists():
            return cls(p)
        try:
            data = json.loads(p.read_text())
            sources = {k: SourceProgress(**v) for k, v in data["sources"].items()}
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"replay state file is unreadable: {err}", source=str(p)) from err
        return cls(p, sources)

    def progress(self, source_id: str) -> SourceProgress:
        return self.sources.setdefault(source_id, SourceProgress())

    def save(self, durable: bool = True) -> None:
        """Write the state; `durable` also fsyncs it (a killed process loses nothing without that,
        a crashed machine could)."""
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"format": 1, "sources": {k: asdict(v) for k, v in self.sources.items()}}, indent=1)
        with open(tmp, "w") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, self.path)
