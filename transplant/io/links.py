"""Weight files shared between directories by hard links, read-only.

An output that holds a file unchanged from another directory (a base shard without
embeddings in a transplanted checkpoint, a Hydra body in a selected vocabulary) links it
instead of copying it: an 8B model's body is 15 GB that need not be written twice. A linked
file is made read-only, because both names are one file on disk: ``save_pretrained`` over
either directory would otherwise rewrite the other's weights in place.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

# Why os.link may fail where a copy works: another file system, no hard links there, or a
# file the kernel will not let this user link (fs.protected_hardlinks).
_CANNOT_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


def read_only(path: Path) -> None:
    """Clear every write bit of ``path`` (of the file itself, whatever name it is reached by)."""
    path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def link_or_copy(source: Path, target: Path) -> str | None:
    """Hard-link ``source`` as ``target``, or copy it where the file system cannot; returns
    why it was copied, or None. A link is made read-only (a file of another owner, which
    this user may not chmod, keeps its mode)."""
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno not in _CANNOT_LINK:
            raise
        shutil.copyfile(source, target)
        return os.strerror(e.errno)
    try:
        read_only(target)
    except PermissionError:
        pass
    return None
