"""How a line says a count of things: one in the singular, any other count in the plural,
with separators past 999 ("1 task", "0 tasks", "2,200 tasks"), wherever distq says one
(a job's end, an error, a warning). Each line used to carry its own way, and some said
"1 tasks", "task(s)" or "2200 tasks" beside "1,300 tasks"."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str = "") -> str:
    """``count`` ``noun``-s as a line says them: ``counted(1, "task")`` is "1 task",
    ``counted(2200, "task")`` "2,200 tasks"; ``plural`` where it is not ``noun`` + "s"
    (``counted(3, "body", "bodies")``)."""
    if count == 1:
        return f"1 {noun}"
    return f"{count:,} {plural or noun + 's'}"
