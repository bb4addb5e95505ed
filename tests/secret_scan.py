"""Search written files for a secret (a W&B API key) in every form it could take on disk."""

from __future__ import annotations

import base64
import random
from pathlib import Path

KEY = f"{random.Random(20240601).getrandbits(160):040x}"  # a random 40-hex "W&B API key", fixed seed


def b64_needles(secret: bytes) -> list[bytes]:
    """Base64 of ``secret`` as it appears inside any longer base64 text, at each offset modulo 3."""
    out = []
    for shift in range(3):
        data = b"\0" * shift + secret
        start, end = -(-shift // 3) * 3, len(data) // 3 * 3  # whole 3-byte groups inside the secret
        chunk = base64.b64encode(data[start:end])
        out += [chunk, chunk.replace(b"+", b"-").replace(b"/", b"_")]
    return out


def needles(key: str) -> dict[str, bytes]:
    raw = key.encode()
    forms = {"text": raw, "upper": key.upper().encode(), "utf-16": key.encode("utf-16-le"),
             "basic-auth": base64.b64encode(b"api:" + raw)}
    forms.update({f"base64/{i}": n for i, n in enumerate(b64_needles(raw))})
    return forms


def leaks(folder: Path, key: str) -> list[str]:
    """``path: form`` for every file under ``folder`` that holds the key in any of its forms."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path.relative_to(folder)}: {form}" for form, n in needles(key).items() if n in data]
    return found
