"""The fault suite's figures become the README's table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faults.render import BEGIN, END, main


def figures(transport: str, fault: str, **values: object) -> dict[str, object]:
    base: dict[str, object] = {
        "transport": transport,
        "fault": fault,
        "how": f"how {fault}",
        "faults_injected": 1,
        "tasks_submitted": 100,
        "tasks_lost": 0,
        "results_twice": 0,
        "worker_crashes": 0,
        "bad_master_exits": 0,
        "recover_seconds": 1.5,
        "longest_gap_seconds": 2.0,
        "duplicates_ignored": 3,
        "seconds": 9.0,
        "full": True,
    }
    return {**base, **values}


def test_one_table_per_transport_into_the_readme(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    for name, data in {
        "redis.b": figures("redis", "broker frozen"),
        "redis.a": figures("redis", "a fault", recover_seconds=None),
        "manager.x": figures("manager", "worker frozen"),
        "manager.b": figures("manager", "broker frozen", how="SIGSTOP of the manager"),
    }.items():
        (results / f"{name}.json").write_text(json.dumps(data))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold table\n{END}\nrest\n")
    md = tmp_path / "results.md"
    assert main([str(results), str(md), str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{END}\nrest\n") and "old" not in text
    assert text.index("**manager**") < text.index("**redis**")  # manager, redis, rabbitmq
    assert "| a fault | 1 | 100 | 0 | 0 | 0 | 0 | — | 2.00 | 3 |" in text
    assert "| broker frozen | 1 | 100 | 0 | 0 | 0 | 0 | 1.50 | 2.00 | 3 |" in text
    # a fault injected differently per transport says how on each
    assert "- *broker frozen* (manager): SIGSTOP of the manager\n" in text
    assert "- *broker frozen* (redis): how broker frozen\n" in text
    assert "- *worker frozen*: how worker frozen\n" in text
    assert "long run" in text
    assert md.read_text().startswith("# Fault injection")


def test_no_figures_is_an_error_and_a_readme_without_markers_too(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 1
    (tmp_path / "redis.a.json").write_text(json.dumps(figures("redis", "a")))
    (tmp_path / "README.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- faults:begin -->"):
        main([str(tmp_path), str(tmp_path / "r.md"), str(tmp_path / "README.md")])
