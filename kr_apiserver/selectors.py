"""Label and field selectors, and the per-request object filter built from them.

Label selectors follow ``k8s.io/apimachinery/pkg/labels``: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
``k notin (a,b)``, ``k`` (exists) and ``!k`` (does not exist), comma-separated and ANDed. Field
selectors accept ``f=v``, ``f==v`` and ``f!=v`` on ``metadata.name``, ``metadata.namespace`` and the
labels a kind declares in :mod:`kr_apiserver.resources`; any other field is a 400, as upstream.

Invariant: parse errors raise ``APIError`` (400), so a bad selector never reaches the store.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from kr_apiserver.resources import Resource
from kr_apiserver.status import bad_request

_SET_TERM = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s*\(([^()]*)\)\s*$")
_EQUALITY_TERM = re.compile(r"^\s*([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)\s*$")
_EXISTS_TERM = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*$")
_FIELD_TERM = re.compile(r"^\s*([^\s!=]+)\s*(==|=|!=)\s*(.*?)\s*$")


@dataclasses.dataclass(frozen=True, slots=True)
class Requirement:
    """One ANDed term of a label selector."""

    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator in ("=", "in"):
            return present and value in self.values
        if self.operator in ("!=", "notin"):  # upstream: a missing label satisfies != and notin
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        return not present


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    terms, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            terms.append(text[start:index])
            start = index + 1
    terms.append(text[start:])
    return [term for term in terms if term.strip()]


def parse_label_selector(text: str) -> tuple[Requirement, ...]:
    requirements = []
    for term in _split_terms(text):
        if match := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in match.group(3).split(",") if v.strip())
            requirements.append(Requirement(match.group(1), match.group(2), values))
        elif match := _EQUALITY_TERM.match(term):
            operator = "=" if match.group(2) == "==" else match.group(2)
            requirements.append(Requirement(match.group(1), operator, frozenset({match.group(3)})))
        elif match := _EXISTS_TERM.match(term):
            requirements.append(Requirement(match.group(2), "!exists" if match.group(1) else "exists"))
        else:
            raise bad_request(f"unable to parse requirement: {term.strip()!r} in label selector {text!r}")
    return tuple(requirements)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form of a dotted field, as field selectors compare it (absent is "")."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def parse_field_selector(text: str, resource: Resource) -> tuple[tuple[str, str, str], ...]:
    """``(field, operator, value)`` terms; ``operator`` is "=" or "!="."""
    allowed = ("metadata.name", "metadata.namespace", *resource.field_labels)
    terms = []
    for term in _split_terms(text):
        match = _FIELD_TERM.match(term)
        if not match:
            raise bad_request(f"invalid selector: {text!r}; can't understand {term.strip()!r}")
        field, operator, value = match.groups()
        if field not in allowed:
            raise bad_request(f"field label not supported: {field}")
        terms.append((field, "!=" if operator == "!=" else "=", value))
    return tuple(terms)


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectFilter:
    """Which objects a list or watch request sees: namespace, label and field selectors."""

    namespace: str | None = None
    labels: tuple[Requirement, ...] = ()
    fields: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, resource: Resource, namespace: str | None, labels: str, fields: str) -> ObjectFilter:
        return cls(namespace, parse_label_selector(labels), parse_field_selector(fields, resource))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        labels = meta.get("labels") or {}
        if not all(requirement.matches(labels) for requirement in self.labels):
            return False
        return all((field_value(obj, field) == value) == (operator == "=") for field, operator, value in self.fields)
