"""Form body decoding shared by the Admin API and plugins."""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import HTTP


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str]] | None:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        return None
    pairs: list[tuple[str, str]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        pairs.append((name, payload.decode("utf-8", "replace")))
    return pairs
