"""Content digests of JSON-able settings: what names a study, a run, a cached target or a step.
One canonical encoding (sorted keys, json's default separators), so equal settings always give
equal digests, across processes and versions."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def json_digest(obj: Any, length: int = 16) -> str:
    """The first `length` hex digits of sha256(json.dumps(obj, sort_keys=True))."""
    blob = json.dumps(obj, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
