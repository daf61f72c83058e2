"""Labels and label selectors: the immutable string map the model uses, and Kubernetes selector matching.

Role: give the model a hashable, immutable mapping (:class:`FrozenMap`) for labels, annotations and
plugin extras, and a typed :class:`LabelSelector` with the exact semantics of
``metav1.LabelSelector`` (``matchLabels`` AND every ``matchExpressions`` requirement).

Invariants:
- A :class:`FrozenMap` never changes after construction and iterates in sorted key order, so two maps
  with the same items are equal, hash alike, and serialise identically.
- A :class:`LabelSelector` is canonical: requirement order and value order from the API do not affect
  equality, because selector semantics do not depend on them.
- An empty selector matches every label set. "No selector" (a null field in the API) is not a
  selector at all; callers model it as ``None``, never as an empty selector.
- :meth:`LabelSelector.from_api` accepts only what the API server would accept and raises
  :class:`SelectorError` otherwise (unknown operator, values where none belong, non-string labels).
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """An immutable, hashable mapping iterating in sorted key order (keys must be orderable)."""

    __slots__ = ("_data", "_hash")

    _data: dict[K, V]
    _hash: int | None

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        # Most label and annotation maps are empty: skip the sort for them.
        object.__setattr__(self, "_data", dict(sorted(pairs, key=_first)) if pairs else {})
        object.__setattr__(self, "_hash", None)

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    # The Mapping mixins would go through __iter__ and __getitem__; selectors call these per pod.
    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: K, default: Any = None) -> Any:
        return self._data.get(key, default)

    def items(self) -> ItemsView[K, V]:
        return self._data.items()

    def keys(self) -> KeysView[K]:
        return self._data.keys()

    def values(self) -> ValuesView[V]:
        return self._data.values()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        # Computed lazily: a map holding unhashable values (plugin extras) is fine until hashed.
        cached = self._hash
        if cached is None:
            cached = hash(frozenset(self._data.items()))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("FrozenMap is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("FrozenMap is immutable")

    def __reduce__(self) -> tuple[type[FrozenMap[K, V]], tuple[dict[K, V]]]:
        # The default slot-state protocol would go through the blocked __setattr__ (copy, pickle).
        return (FrozenMap, (self._data,))


def _first(item: tuple[Any, Any]) -> Any:
    return item[0]


class SelectorError(ValueError):
    """A label selector the API server would reject."""


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One ``matchExpressions`` entry; ``values`` is sorted and free of duplicates."""

    key: str
    operator: SelectorOperator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is SelectorOperator.IN:
            return labels.get(self.key) in self.values
        if self.operator is SelectorOperator.NOT_IN:
            # An absent key satisfies NotIn, as in apimachinery's labels.Requirement.
            return labels.get(self.key) not in self.values
        if self.operator is SelectorOperator.EXISTS:
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A ``metav1.LabelSelector``: every ``match_labels`` pair AND every requirement must hold."""

    match_labels: FrozenMap[str, str] = FrozenMap()
    match_expressions: tuple[LabelRequirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        """True when the selector matches everything."""
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        # Plain loops: the firewall evaluates selectors for every pod, so this is a hot path.
        get = labels.get
        for key, value in self.match_labels._data.items():
            if get(key) != value:
                return False
        for requirement in self.match_expressions:
            if not requirement.matches(labels):
                return False
        return True

    @classmethod
    def from_api(cls, raw: object) -> LabelSelector:
        """Parse a selector as the API sends it (``{}`` is the empty selector)."""
        if not isinstance(raw, Mapping):
            raise SelectorError(f"selector must be an object, got {type(raw).__name__}")
        match_labels = raw.get("matchLabels") or {}
        if not isinstance(match_labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in match_labels.items()
        ):
            raise SelectorError("matchLabels must map strings to strings")
        expressions = raw.get("matchExpressions") or []
        if not isinstance(expressions, list):
            raise SelectorError("matchExpressions must be a list")
        requirements = sorted(
            (_parse_requirement(entry) for entry in expressions),
            key=lambda r: (r.key, r.operator.value, r.values),
        )
        return cls(FrozenMap(match_labels), tuple(dict.fromkeys(requirements)))


_OPERATOR_NAMES = frozenset(op.value for op in SelectorOperator)


def _parse_requirement(entry: Any) -> LabelRequirement:
    if not isinstance(entry, Mapping):
        raise SelectorError("matchExpressions entries must be objects")
    key = entry.get("key")
    if not isinstance(key, str) or not key:
        raise SelectorError("matchExpressions entry without a key")
    operator_name = entry.get("operator")
    if not isinstance(operator_name, str) or operator_name not in _OPERATOR_NAMES:
        raise SelectorError(f"unknown selector operator {operator_name!r} for key {key!r}")
    operator = SelectorOperator(operator_name)
    values = entry.get("values") or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SelectorError(f"values for key {key!r} must be a list of strings")
    needs_values = operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)
    if needs_values and not values:
        raise SelectorError(f"operator {operator.value} for key {key!r} needs values")
    if not needs_values and values:
        raise SelectorError(f"operator {operator.value} for key {key!r} takes no values")
    return LabelRequirement(key, operator, tuple(sorted(set(values))))
