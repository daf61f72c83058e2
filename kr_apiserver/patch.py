"""PATCH bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

``application/strategic-merge-patch+json`` is applied as a JSON merge patch: lists are replaced
whole rather than merged by their patch merge key, and ``$patch``/``$retainKeys`` directives are not
interpreted. That is exact for maps and scalars, which is what tests and the lab patch.

Invariant: the target is never mutated; a new document is returned. Malformed patches raise
``APIError`` 400, and patches that cannot apply (a missing path, a failed ``test``) raise 422, as
kube-apiserver does.
"""

from __future__ import annotations

import copy
from typing import Any

from kr_apiserver.status import APIError, bad_request

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
SUPPORTED = (MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH)


def apply_patch(content_type: str, target: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply ``patch`` (already JSON-decoded) of the given media type to ``target``."""
    if content_type == JSON_PATCH:
        if not isinstance(patch, list):
            raise bad_request("json patch must be a list of operations")
        result = json_patch(target, patch)
    else:
        if not isinstance(patch, dict):
            raise bad_request("merge patch must be a JSON object")
        result = merge_patch(target, patch)
    if not isinstance(result, dict):
        raise APIError(422, "patch did not produce a JSON object")
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise bad_request(f"invalid JSON pointer {pointer!r}")
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def _index(container: list[Any], token: str, *, insert: bool) -> int:
    if insert and token == "-":
        return len(container)
    if not token.isdigit():
        raise APIError(422, f"invalid array index {token!r}")
    index = int(token)
    if index > len(container) or (not insert and index == len(container)):
        raise APIError(422, f"array index {index} out of bounds")
    return index


def _parent(document: Any, tokens: list[str]) -> Any:
    node = document
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, insert=False)]
        else:
            raise APIError(422, f"path /{'/'.join(tokens)} does not exist")
    return node


def _get(document: Any, tokens: list[str]) -> Any:
    if not tokens:
        return document
    parent = _parent(document, tokens)
    if isinstance(parent, dict) and tokens[-1] in parent:
        return parent[tokens[-1]]
    if isinstance(parent, list):
        return parent[_index(parent, tokens[-1], insert=False)]
    raise APIError(422, f"path /{'/'.join(tokens)} does not exist")


def _add(document: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(document, tokens)
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, tokens[-1], insert=True), value)
    else:
        raise APIError(422, f"cannot add at /{'/'.join(tokens)}")
    return document


def _replace(document: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(document, tokens)
    if isinstance(parent, dict) and tokens[-1] in parent:
        parent[tokens[-1]] = value
    elif isinstance(parent, list):
        parent[_index(parent, tokens[-1], insert=False)] = value
    else:
        raise APIError(422, f"path /{'/'.join(tokens)} does not exist")
    return document


def _remove(document: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise APIError(422, "cannot remove the whole document")
    parent = _parent(document, tokens)
    if isinstance(parent, dict) and tokens[-1] in parent:
        del parent[tokens[-1]]
    elif isinstance(parent, list):
        del parent[_index(parent, tokens[-1], insert=False)]
    else:
        raise APIError(422, f"path /{'/'.join(tokens)} does not exist")
    return document


def json_patch(target: dict[str, Any], operations: list[Any]) -> Any:
    """RFC 6902 with all six operations, applied in order to a copy of ``target``."""
    document: Any = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or not isinstance(operation.get("path"), str):
            raise bad_request(f"invalid json patch operation: {operation!r}")
        op, path = operation.get("op"), _tokens(operation["path"])
        if op in ("add", "replace", "test") and "value" not in operation:
            raise bad_request(f"json patch operation {op!r} needs a value")
        if op == "add":
            document = _add(document, path, copy.deepcopy(operation["value"]))
        elif op == "remove":
            document = _remove(document, path)
        elif op == "replace":
            document = _replace(document, path, copy.deepcopy(operation["value"]))
        elif op == "test":
            if _get(document, path) != operation["value"]:
                raise APIError(422, f"test failed at {operation['path']}")
        elif op in ("move", "copy"):
            source = _tokens(str(operation.get("from", "")))
            value = copy.deepcopy(_get(document, source))
            if op == "move":
                document = _remove(document, source)
            document = _add(document, path, value)
        else:
            raise bad_request(f"unknown json patch operation {op!r}")
    return document
