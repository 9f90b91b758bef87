"""The hypernetworks this machine has trained, so that `--method auto` finds one by itself.

`transplant hypernet train` adds each finished ``HN_DIR`` to a small JSON list in the cache
(``$TRANSPLANT_CACHE/hypernets.json``): its absolute path, kind and base. Nothing else is
copied; a directory that has since moved or been deleted is left out when the list is read.
Whether an entry fits a base is not decided here but by loading it, the same check
``--method zett --hypernet DIR`` applies, so the list can never vouch for a wrong base.
Among those that fit, :func:`ranked` puts the best first by the network's own last held-out
bits per byte (its ``log.jsonl``): a machine that trained two for one base (two objectives, a
longer run) should get the better one, not merely the newer.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from transplant.io.cache import cache_dir

CATALOG_FILE = "hypernets.json"
LOG_FILE = "log.jsonl"  # the training log, copied into HN_DIR by the trainer


@dataclass(frozen=True)
class Entry:
    path: str  # absolute HN_DIR
    kind: str  # zett | hyperofa
    base: str  # the base reference it was trained with, as the user gave it


def _catalog() -> Path:
    return cache_dir() / CATALOG_FILE


def _read() -> list[Entry]:
    try:
        return [Entry(**item) for item in json.loads(_catalog().read_text())]
    except (OSError, ValueError, TypeError):
        return []  # no list yet (or one a crash cut short): nothing registered


def remember(directory: Path, kind: str, base: str) -> None:
    """Add (or refresh) ``directory``; the list is rewritten atomically."""
    entry = Entry(str(Path(directory).resolve()), kind, base)
    kept = [e for e in _read() if e.path != entry.path]
    path = _catalog()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps([asdict(e) for e in [*kept, entry]], indent=2) + "\n")
    tmp.replace(path)


def entries(kind: str | None = None) -> list[Entry]:
    """Registered hypernetworks that still exist, newest first, optionally of one kind."""
    found = [e for e in reversed(_read()) if Path(e.path, "config.json").is_file()]
    return [e for e in found if kind is None or e.kind == kind]


def heldout_bpb(directory: str | Path) -> float | None:
    """The last held-out bits per byte in the hypernetwork's training log; None without one
    (trained without --eval-corpus, or the log is unreadable)."""
    try:
        lines = Path(directory, LOG_FILE).read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            figure = json.loads(line).get("eval", {}).get("bpb")
        except (ValueError, AttributeError):
            continue
        if isinstance(figure, (int, float)):
            return float(figure)
    return None


def ranked(kind: str | None = None) -> list[Entry]:
    """:func:`entries` best first: the lowest held-out bits per byte, then those without a
    figure, newest first within each (bits per byte do not depend on the tokenizer, so networks
    for one base compare on the same text)."""
    scored = [(heldout_bpb(e.path), e) for e in entries(kind)]
    return [e for _, e in sorted(scored, key=lambda pair: (pair[0] is None, pair[0] or 0.0))]
