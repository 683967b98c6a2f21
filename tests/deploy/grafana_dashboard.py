"""Reading a Grafana dashboard's JSON: its panels, its PromQL, its template variables.

Grafana cannot run here, so the tests take every query out of the dashboard, substitute
the variables as Grafana would, and hand the plain PromQL to promtool and Prometheus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Grafana's own variables: durations and ranges a query may use, with a value for tests.
BUILTIN_VALUES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "15000",
}
ALL_VALUE = ".+"  # what a multi-value variable with "All" selected becomes in a regex

# $name, ${name}, ${name:format} and the old [[name]]
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$([A-Za-z_]\w*)|\[\[(\w+)(?::\w+)?\]\]")
_LABEL_VALUES = re.compile(r"label_values\(\s*(?:(?P<expr>.+),\s*)?(?P<label>\w+)\s*\)", re.S)
_QUERY_RESULT = re.compile(r"query_result\((?P<expr>.+)\)", re.S)


@dataclass(frozen=True)
class Query:
    """One PromQL expression of the dashboard, where it sits, and the label it must carry."""

    where: str
    expr: str
    label: str | None = None  # label_values(expr, label): results must have this label


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included, rows themselves included."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every panel target's expr and every query variable's PromQL."""
    found: list[Query] = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel.get('id')} {panel.get('title')!r} target {target.get('refId')}"
            found.append(Query(where, target.get("expr", "")))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            found.append(variable_query(variable))
    return found


def variable_query(variable: dict[str, Any]) -> Query:
    """The PromQL behind a query variable (label_values(...) or query_result(...))."""
    where = f"variable {variable.get('name')!r}"
    query = variable.get("query")
    text = query.get("query", "") if isinstance(query, dict) else str(query or "")
    if match := _LABEL_VALUES.fullmatch(text.strip()):
        label = match.group("label")
        return Query(where, match.group("expr") or f'{{{label}=~".+"}}', label)
    if match := _QUERY_RESULT.fullmatch(text.strip()):
        return Query(where, match.group("expr"))
    raise ValueError(f"{where}: query {text!r} is neither label_values() nor query_result()")


def variables_used(expr: str) -> set[str]:
    return {next(name for name in match.groups() if name) for match in _VARIABLE.finditer(expr)}


def substitute(expr: str, defined: set[str]) -> str:
    """``expr`` as Grafana would send it, "All" selected; KeyError for an unknown variable."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name in BUILTIN_VALUES:
            return BUILTIN_VALUES[name]
        if name in defined:
            return ALL_VALUE
        raise KeyError(f"variable ${name} is neither defined in the dashboard nor Grafana's")

    return _VARIABLE.sub(value, expr)
