"""Label selectors (metav1.LabelSelector semantics) and the immutable FrozenMap."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from kr_core.selectors import FrozenMap, LabelRequirement, LabelSelector, SelectorError, SelectorOperator

WEB = {"app": "web", "tier": "frontend", "env": "prod"}


def selector(**raw: Any) -> LabelSelector:
    return LabelSelector.from_api(raw)


def test_empty_selector_matches_everything() -> None:
    empty = selector()
    assert empty.is_empty
    assert empty.matches({}) and empty.matches(WEB)
    assert selector(matchLabels=None, matchExpressions=None) == empty


@pytest.mark.parametrize(
    ("raw", "labels", "expected"),
    [
        ({"matchLabels": {"app": "web"}}, WEB, True),
        ({"matchLabels": {"app": "web", "env": "dev"}}, WEB, False),
        ({"matchLabels": {"app": "web"}}, {}, False),
        ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["dev", "prod"]}]}, WEB, True),
        ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}]}, WEB, False),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}, WEB, False),
        ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}, WEB, True),
        ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}, WEB, False),
        # NotIn is satisfied by a missing key
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, WEB, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, WEB, True),
        ({"matchExpressions": [{"key": "zone", "operator": "Exists", "values": []}]}, WEB, False),
        ({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, WEB, True),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, WEB, False),
        # matchLabels AND every expression
        (
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "Exists"},
                    {"key": "env", "operator": "In", "values": ["dev"]},
                ],
            },
            WEB,
            False,
        ),
        (
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "Exists"},
                    {"key": "env", "operator": "NotIn", "values": ["dev"]},
                ],
            },
            WEB,
            True,
        ),
    ],
)
def test_matches(raw: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.from_api(raw).matches(labels) is expected


def test_matches_accepts_frozen_labels() -> None:
    assert selector(matchLabels={"app": "web"}).matches(FrozenMap(WEB))


def test_selector_is_canonical() -> None:
    a = selector(
        matchExpressions=[
            {"key": "b", "operator": "In", "values": ["y", "x", "x"]},
            {"key": "a", "operator": "Exists"},
        ]
    )
    b = selector(
        matchExpressions=[
            {"key": "a", "operator": "Exists"},
            {"key": "b", "operator": "In", "values": ["x", "y"]},
        ]
    )
    assert a == b and hash(a) == hash(b)
    assert a.match_expressions == (
        LabelRequirement("a", SelectorOperator.EXISTS),
        LabelRequirement("b", SelectorOperator.IN, ("x", "y")),
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"matchExpressions": [{"key": "a", "operator": "Like", "values": ["x"]}]}, "unknown selector operator"),
        ({"matchExpressions": [{"key": "a", "values": ["x"]}]}, "unknown selector operator None"),
        ({"matchExpressions": [{"key": "a", "operator": ["In"], "values": ["x"]}]}, "unknown selector operator"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "needs values"),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}, "needs values"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "takes no values"),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]}, "takes no values"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "without a key"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}, "list of strings"),
        ({"matchExpressions": {"key": "a"}}, "must be a list"),
        ({"matchExpressions": ["a"]}, "entries must be objects"),
        ({"matchLabels": {"a": 1}}, "matchLabels"),
        ({"matchLabels": ["a"]}, "matchLabels"),
    ],
)
def test_invalid_selectors_are_rejected(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        LabelSelector.from_api(raw)


def test_a_selector_must_be_an_object() -> None:
    with pytest.raises(SelectorError, match="must be an object"):
        LabelSelector.from_api("app=web")


# --- FrozenMap


def test_frozen_map_is_a_read_only_sorted_mapping() -> None:
    labels = FrozenMap({"b": "2", "a": "1"})
    assert list(labels) == ["a", "b"]
    assert labels["a"] == "1" and labels.get("z") is None and len(labels) == 2
    assert FrozenMap([("b", "2"), ("a", "1")]) == labels
    with pytest.raises(TypeError):
        labels["c"] = "3"  # type: ignore[index]
    with pytest.raises(AttributeError):
        labels._data = {}


def test_frozen_map_copies_its_source() -> None:
    source = {"a": "1"}
    labels = FrozenMap(source)
    source["a"] = "changed"
    assert labels["a"] == "1"


def test_frozen_map_equality_and_hash() -> None:
    labels = FrozenMap({"a": "1", "b": "2"})
    assert labels == {"b": "2", "a": "1"}
    assert labels != {"a": "1"}
    assert labels != [("a", "1"), ("b", "2")]
    assert hash(labels) == hash(FrozenMap({"b": "2", "a": "1"}))
    assert {labels: True}[FrozenMap({"a": "1", "b": "2"})]


def test_frozen_map_with_unhashable_values_is_usable_until_hashed() -> None:
    extras = FrozenMap({"peers": [1, 2]})
    assert extras["peers"] == [1, 2]
    with pytest.raises(TypeError):
        hash(extras)


def test_frozen_map_survives_copy_and_pickle() -> None:
    labels = FrozenMap({"a": "1"})
    assert copy.copy(labels) == labels
    assert copy.deepcopy(labels) == labels
    assert pickle.loads(pickle.dumps(labels)) == labels
    assert repr(labels) == "FrozenMap({'a': '1'})"
