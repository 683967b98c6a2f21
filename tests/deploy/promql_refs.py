"""What a PromQL expression refers to: metric names, label matchers and grouping labels.

Not a PromQL parser (promtool and Prometheus check the syntax); a scanner good enough to
find every name an expression depends on, so a test can hold those names against the
metrics distq exports (spec_metrics.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from spec_metrics import TARGET_LABELS, Family, all_labels

AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile"}
)
KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan"})
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_TOKEN = re.compile(
    rf"(?P<space>\s+|\#[^\n]*)|(?P<string>{_STRING})|(?P<number>\d[\w.]*)"
    r"|(?P<ident>[A-Za-z_:][\w:]*)|(?P<other>.)",
    re.DOTALL,
)
_MATCHER = re.compile(rf"\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*({_STRING})\s*(?:,|$)")
_LABEL_LIST = re.compile(r"\(\s*([\w\s,]*?)\s*,?\s*\)")
_PLAIN_ALTERNATION = re.compile(r"\w+(?:\|\w+)*")


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...]


@dataclass(frozen=True)
class References:
    selectors: tuple[Selector, ...]
    grouping_labels: frozenset[str]


def references(expr: str) -> References:
    """The selectors and grouping labels in ``expr``; ValueError on what it cannot scan."""
    selectors: list[Selector] = []
    grouping: set[str] = set()
    pos = 0
    while pos < len(expr):
        token = _TOKEN.match(expr, pos)
        assert token is not None  # the last alternative matches any character
        pos = token.end()
        kind, text = token.lastgroup, token.group()
        if kind == "other" and text == "[":
            pos = _closing(expr, pos, "]")  # a range or subquery: durations only
        elif kind == "other" and text == "{":
            end = _closing(expr, pos, "}")
            selectors.append(Selector("", _matchers(expr[pos : end - 1])))
            pos = end
        elif kind == "ident":
            pos = _after_identifier(expr, pos, text, selectors, grouping)
    return References(tuple(selectors), frozenset(grouping))


def _after_identifier(
    expr: str, pos: int, name: str, selectors: list[Selector], grouping: set[str]
) -> int:
    rest = expr[pos:]
    stripped = rest.lstrip()
    if name in GROUPING:
        labels = _LABEL_LIST.match(stripped)
        if labels is None:
            if name in ("group_left", "group_right"):
                return pos  # without a label list
            raise ValueError(f"{name} without a label list at {expr[pos:][:30]!r}")
        grouping.update(label.strip() for label in labels.group(1).split(",") if label.strip())
        return pos + (len(rest) - len(stripped)) + labels.end()
    if name in KEYWORDS or name in AGGREGATIONS or stripped.startswith("("):
        return pos  # an operator or a function call
    matchers: tuple[Matcher, ...] = ()
    if stripped.startswith("{"):
        start = pos + (len(rest) - len(stripped)) + 1
        pos = _closing(expr, start, "}")
        matchers = _matchers(expr[start : pos - 1])
    selectors.append(Selector(name, matchers))
    return pos


def _closing(expr: str, pos: int, close: str) -> int:
    """The position after the ``close`` that ends the bracket opened before ``pos``."""
    while pos < len(expr):
        token = _TOKEN.match(expr, pos)
        assert token is not None
        pos = token.end()
        if token.group() == close:
            return pos
    raise ValueError(f"unclosed bracket, expected {close!r} in {expr!r}")


def _matchers(body: str) -> tuple[Matcher, ...]:
    found: list[Matcher] = []
    pos = 0
    while body[pos:].strip():
        match = _MATCHER.match(body, pos)
        if match is None:
            raise ValueError(f"cannot read label matchers {body[pos:]!r}")
        label, op, quoted = match.groups()
        found.append(Matcher(label, op, quoted[1:-1]))
        pos = match.end()
    return tuple(found)


def problems(expr: str, names: Mapping[str, Family]) -> list[str]:
    """What in ``expr`` does not exist among ``names``: metrics, labels, label values."""
    refs = references(expr)
    found: list[str] = []
    for selector in refs.selectors:
        family = names.get(selector.metric)
        if not selector.metric:
            found.append("a selector without a metric name")
            continue
        if family is None:
            found.append(f"metric {selector.metric!r} is not one distq exports")
            continue
        allowed = set(family.labels) | TARGET_LABELS
        if selector.metric.endswith("_bucket") and family.kind == "histogram":
            allowed.add("le")
        for matcher in selector.matchers:
            if matcher.label not in allowed:
                found.append(f"{selector.metric} has no label {matcher.label!r}")
            elif matcher.label in family.values:
                found.extend(_value_problems(selector.metric, matcher, family))
    for label in sorted(refs.grouping_labels - all_labels()):
        found.append(f"grouping by {label!r}, a label no distq metric has")
    return found


def _value_problems(metric: str, matcher: Matcher, family: Family) -> list[str]:
    """Closed label values: ``=`` and plain ``a|b`` regexes must name existing values."""
    if "$" in matcher.value:
        return []  # a Grafana variable, substituted at query time
    if matcher.op in ("=", "!="):
        candidates = [matcher.value]
    elif _PLAIN_ALTERNATION.fullmatch(matcher.value):
        candidates = matcher.value.split("|")
    else:
        return []
    known = family.values[matcher.label]
    return [
        f"{metric}{{{matcher.label}={value!r}}}: {matcher.label} is one of {sorted(known)}"
        for value in candidates
        if value not in known
    ]
