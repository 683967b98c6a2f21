"""promql_refs finds every name an expression depends on, and spots the ones distq lacks."""

from __future__ import annotations

import pytest
from promql_refs import Matcher, Selector, problems, references
from spec_metrics import series_names

NAMES = series_names()


def test_finds_selectors_inside_functions_aggregations_and_binary_operators() -> None:
    refs = references(
        "histogram_quantile(0.99, sum by (le, task) ("
        'rate(distq_worker_task_duration_seconds_bucket{queue=~"$queue"}[$__rate_interval])))\n'
        "/ on (transport) group_left max(distq_workers offset 5m) > bool 0.5e3"
    )
    assert refs.selectors == (
        Selector("distq_worker_task_duration_seconds_bucket", (Matcher("queue", "=~", "$queue"),)),
        Selector("distq_workers", ()),
    )
    assert refs.grouping_labels == {"le", "task", "transport"}


def test_grouping_after_the_aggregated_expression_and_strings_that_look_like_names() -> None:
    refs = references(
        'sum(label_replace(distq_workers, "dst", "$1", "queue", "(.*)")) without (instance)'
    )
    assert [s.metric for s in refs.selectors] == ["distq_workers"]
    assert refs.grouping_labels == {"instance"}


def test_matchers_with_escaped_quotes_and_every_operator() -> None:
    refs = references(r'distq_queue_depth{state!="dead", queue=~"a\"b", job!~"x", instance="i",}')
    assert [m.op for m in refs.selectors[0].matchers] == ["!=", "=~", "!~", "="]


def test_spec_conforming_expressions_have_no_problems() -> None:
    expr = (
        "sum by (transport, queue, task) ("
        'rate(distq_worker_tasks_total{outcome=~"failed|retried"}[5m]))'
        ' / ignoring (job) max(distq_queue_depth{state="in_flight"}) or up{job="distq-worker"} == 0'
    )
    assert problems(expr, NAMES) == []


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(distq_worker_task_total[1m])", "metric 'distq_worker_task_total' is not one"),
        ('distq_queue_depth{status="ready"}', "distq_queue_depth has no label 'status'"),
        ('distq_queue_depth{state="inflight"}', "state is one of"),
        ('distq_worker_tasks_total{outcome=~"ok|error"}', "{outcome='error'}: outcome is one of"),
        ("sum by (worker) (distq_workers)", "grouping by 'worker'"),
        ('{__name__="distq_workers"}', "a selector without a metric name"),
        ('distq_workers_bucket{le="1"}', "metric 'distq_workers_bucket'"),
        ('distq_master_task_round_trip_seconds_count{le="1"}', "has no label 'le'"),
    ],
)
def test_names_distq_does_not_export_are_problems(expr: str, problem: str) -> None:
    found = problems(expr, NAMES)
    assert any(problem in p for p in found), found


def test_unclosed_brackets_are_an_error_not_a_silent_pass() -> None:
    with pytest.raises(ValueError, match="unclosed"):
        references('distq_workers{queue="a"')
