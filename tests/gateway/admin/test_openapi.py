"""docs/reference/admin-api.openapi.json is generated from the app and must not drift."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.admin._openapi import default_document, render

DOC = Path(__file__).resolve().parents[3] / "docs" / "reference" / "admin-api.openapi.json"
REGENERATE = "python -m gateway.admin._openapi > docs/reference/admin-api.openapi.json"


def test_openapi_file_is_up_to_date() -> None:
    assert DOC.exists(), f"missing {DOC}; generate it with: {REGENERATE}"
    assert DOC.read_text(encoding="utf-8") == render(), (
        f"{DOC.name} is out of date with gateway/admin; regenerate it with: {REGENERATE}"
    )


def test_openapi_document_shape() -> None:
    doc = default_document()
    assert doc["openapi"] == "3.1.0"
    paths = doc["paths"]
    for path in (
        "/services",
        "/services/{key}",
        "/services/{parent}/routes",
        "/routes/{key}/service",
        "/consumers/{parent}/key-auth",
        "/upstreams/{parent}/targets/all",
        "/tags/{tag}",
        "/config",
        "/status",
    ):
        assert path in paths, path
    listing = paths["/services"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"size", "offset", "tags"}
    created = paths["/services"]["post"]["responses"]["201"]
    assert created["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/services"
    }
    assert set(paths["/config"]) == {"get", "post"}
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    # Every reference resolves.
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        node = doc
        for key in ref.removeprefix("#/").split("/"):
            node = node[key]
