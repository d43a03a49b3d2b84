"""The node id: generated once, persisted in ``<prefix>/node.id``, reused on restart.

A data plane is known to its control plane by this id, so it must survive restarts. A
corrupt id file (not a UUID) is replaced with a logged warning rather than stopping the node.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

log = logging.getLogger("gateway")

NODE_ID_FILE = "node.id"


def load_or_create_node_id(prefix: Path, configured: str | None = None) -> str:
    """Return the node id: ``configured`` if given, else the persisted one, else a new one."""
    if configured:
        return str(uuid.UUID(configured))
    path = prefix / NODE_ID_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("node id file %s unreadable (%s); generating a new node id", path, exc)
        text = None
    if text is not None:
        try:
            parsed = uuid.UUID(text)
        except ValueError:
            log.warning("node id file %s is corrupt; generating a new node id", path)
        else:
            if len(text) == 36:
                return str(parsed)
            log.warning("node id file %s is corrupt; generating a new node id", path)
    node_id = str(uuid.uuid4())
    prefix.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(node_id + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return node_id
