"""Integrity of a model manifest: a SHA-256 over its canonical content, recorded in the manifest itself.

``manifest_sha256`` is the SHA-256 of the manifest without that key, serialised as canonical JSON (keys
sorted, no whitespace, UTF-8). The manifest also records the SHA-256 of the weights, so one check covers
manifest + weights: any edit of either is detected. It is a checksum, not a signature: it detects damaged
or edited files, not someone who rewrites both on purpose (what a manifest can do is limited anyway by
:mod:`CovidCTLib.models.runtime.architectures`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from CovidCTLib.errors import ModelError

SEAL_KEY = "manifest_sha256"


def manifest_digest(manifest: dict[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of ``manifest`` without its ``manifest_sha256``."""
    body = {k: v for k, v in manifest.items() if k != SEAL_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` with ``manifest_sha256`` (re)computed: call it on every manifest you write."""
    out = {k: v for k, v in manifest.items() if k != SEAL_KEY}
    out[SEAL_KEY] = manifest_digest(out)
    return out


def check_seal(manifest: dict[str, Any], where: str, hint: str) -> None:
    """Refuse a manifest without ``manifest_sha256`` or whose content no longer matches it."""
    recorded = manifest.get(SEAL_KEY)
    if not isinstance(recorded, str):
        raise ModelError(
            f"{where} has no {SEAL_KEY} (written by an older CovidCT or by hand), so its content "
            f"cannot be trusted. {hint}"
        )
    actual = manifest_digest(manifest)
    if actual != recorded:
        raise ModelError(
            f"{where} was modified: its content does not match its {SEAL_KEY} (expected "
            f"{recorded[:12]}..., got {actual[:12]}...). {hint}"
        )
