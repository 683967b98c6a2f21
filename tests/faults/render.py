"""Render the fault suite's figures: ``python tests/faults/render.py DIR [MD [README]]``.

Reads every ``<transport>.<fault>.json`` that :class:`faults.harness.Figures` wrote in
DIR, writes one table per transport to MD (default: stdout), and, given README, puts
the same tables between its ``<!-- faults:begin -->`` and ``<!-- faults:end -->`` lines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
TRANSPORTS = ("manager", "redis", "rabbitmq")
COLUMNS = (
    ("fault", "fault"),
    ("faults_injected", "faults"),
    ("tasks_submitted", "tasks"),
    ("tasks_lost", "lost"),
    ("results_twice", "twice"),
    ("worker_crashes", "worker crashes"),
    ("bad_master_exits", "bad master exits"),
    ("recover_seconds", "recover s"),
    ("longest_gap_seconds", "longest gap s"),
    ("duplicates_ignored", "duplicates dropped"),
)
LEGEND = """\
*faults*: faults injected; *tasks*: tasks submitted by the masters that had to finish;
*lost*: of those, never answered; *twice*: results handed to the user more than once;
*worker crashes*: workers that died or printed a traceback unbidden; *bad master exits*:
masters that exited other than documented (0 done, 1 stopped or failed); *recover s*:
worst time from a fault's end to the next result; *longest gap s*: longest time without
a result; *duplicates dropped*: results that came twice (at-least-once) and the master
counted once. Lost, twice, worker crashes and bad master exits must be 0."""


def load(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def tables(figures: list[dict[str, Any]]) -> str:
    """One table per transport, faults in a stable order, then how each was injected."""
    runs = {bool(f.get("full")) for f in figures}
    scale = "long run (`make faults`)" if runs == {True} else "short run (`make test`)"
    out = [f"Figures of the {scale}.", "", LEGEND, ""]
    hows: dict[str, dict[str, list[str]]] = {}
    for transport in TRANSPORTS:
        rows = sorted((f for f in figures if f["transport"] == transport), key=lambda f: f["fault"])
        if not rows:
            continue
        out += [f"**{transport}**", ""]
        out.append("| " + " | ".join(title for _, title in COLUMNS) + " |")
        out.append("|" + "|".join("---" if key == "fault" else "--:" for key, _ in COLUMNS) + "|")
        for row in rows:
            out.append("| " + " | ".join(_cell(row.get(key)) for key, _ in COLUMNS) + " |")
            hows.setdefault(row["fault"], {}).setdefault(row["how"], []).append(transport)
        out.append("")
    out += ["How each fault was injected:", ""]
    for fault, ways in sorted(hows.items()):
        for how, where in ways.items():  # one line per way; named by transport if several
            on = f" ({', '.join(where)})" if len(ways) > 1 else ""
            out.append(f"- *{fault}*{on}: {how}")
    return "\n".join(out) + "\n"


def into_readme(readme: Path, text: str) -> None:
    content = readme.read_text()
    head, found, rest = content.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} section")
    readme.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    figures = load(Path(argv[0]))
    if not figures:
        print(f"no figures in {argv[0]}: run the fault suite first", file=sys.stderr)
        return 1
    text = tables(figures)
    if len(argv) > 1:
        Path(argv[1]).write_text("# Fault injection: figures\n\n" + text)
    else:
        sys.stdout.write(text)
    if len(argv) > 2:
        into_readme(Path(argv[2]), text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
