"""Word counts over a folder of text files, split into tasks for distq workers.

    python wordcount.py FOLDER [--glob '**/*.txt'] [--piece-bytes 65536] [--top 10]
                               [--check] [--output counts.json]

Every file matching ``--glob`` under FOLDER is read and cut, at line ends, into pieces
of about ``--piece-bytes``; each piece is one task (``wordcount_tasks:count_words``),
sent through :class:`distq.Executor` with ``map``; the pieces' counts are added up.
``--check`` counts the same files again in this process and compares. Settings come
from the ``DISTQ_*`` environment, as for ``distq worker``: with the manager transport
this job hosts the queues and the workers connect to it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import distq
from wordcount_tasks import count_words, words

NOT_A_WORD = re.compile(r"[\W\d_]")  # the complement of wordcount_tasks.WORD's letters


def pieces(text: str, size: int) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters (at most twice that), each ending
    at a line end; a line far longer than ``size`` is cut after a character no word holds
    (a space, a comma, a digit; a word only if it is longer than ``size`` itself), so no
    piece outgrows a message and the counts stay the same."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size, start + 2 * size)
        if end >= 0:
            end += 1
        elif len(text) - start <= 2 * size:
            end = len(text)
        else:
            window = text[start + 1 : start + size + 1]
            gap = NOT_A_WORD.search(window[::-1])  # the last character no word holds
            end = start + 1 + len(window) - gap.start() if gap else start + size
        yield text[start:end]
        start = end


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{value} is not a number of seconds above 0")
    return value


def characters(text: str, size: int) -> int:
    """How many characters of ``text`` make about ``size`` bytes of UTF-8: 3-byte
    characters cut by characters made pieces three times --piece-bytes."""
    return max(1, size * len(text) // max(1, len(text.encode("utf-8", "replace"))))


def unwritable(path: Path) -> str | None:
    """Why ``--output`` ``path`` cannot be written, checked before the job (as ``distq
    master --report`` is): found at the end, it cost the whole job's counts."""
    if path.is_dir():
        return "is a directory"
    where = path.parent
    if not where.is_dir():
        return f"its directory {str(where)!r} does not exist"
    if not os.access(where if not path.exists() else path, os.W_OK):
        return "cannot be written by this user"
    return None


def read(folder: Path, pattern: str) -> list[str]:
    files = sorted(path for path in folder.glob(pattern) if path.is_file())
    if not files:
        sys.exit(f"wordcount: no file matches {pattern!r} under {folder}")
    return [path.read_text(encoding="utf-8", errors="replace") for path in files]


def main() -> int:
    about = __doc__ or "Word counts over a folder of text files."  # None under python -OO
    parser = argparse.ArgumentParser(description=about.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--glob", default="**/*.txt", help="which files (default **/*.txt)")
    parser.add_argument("--piece-bytes", type=positive, default=65536, help="text per task")
    parser.add_argument("--top", type=int, default=10, help="most frequent words to print")
    parser.add_argument("--check", action="store_true", help="compare with a local count")
    parser.add_argument("--output", type=Path, help="write every count as JSON here")
    parser.add_argument("--timeout", type=seconds, default=300, help="give up after S seconds")
    args = parser.parse_args()
    if isinstance(sys.stdout, io.TextIOWrapper):  # words an ASCII locale lacks: escaped
        sys.stdout.reconfigure(errors="backslashreplace")
    why = None if args.output is None else unwritable(args.output)
    if why is not None:
        print(f"wordcount: --output {str(args.output)!r}: {why}", file=sys.stderr)
        return 2

    texts = read(args.folder, args.glob)
    work = [piece for text in texts for piece in pieces(text, characters(text, args.piece_bytes))]
    started = time.perf_counter()
    total: Counter[str] = Counter()
    try:
        executor = distq.Executor(task_timeout=args.timeout)
    except distq.DistqError as exc:  # a setting or the broker: one line, as distq says it
        print(f"wordcount: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, distq.errors.ConfigError) else 3
    with executor:
        print(f"wordcount: {len(texts)} files, {len(work)} tasks, {executor.describe()}")
        try:
            for counts in executor.map(count_words, work, timeout=args.timeout):
                total.update(counts)
        except (distq.DistqError, TimeoutError) as exc:  # a piece too large, a failed task
            print(f"wordcount: {exc}", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - started
    print(f"{sum(total.values()):,} words, {len(total):,} different, in {elapsed:.2f} s")
    for word, count in total.most_common(args.top):
        print(f"{count:>10,}  {word}")
    if args.output:
        text = json.dumps(dict(total), ensure_ascii=False, sort_keys=True)
        args.output.write_text(text, encoding="utf-8")
    if args.check:
        local = sum((words(text) for text in texts), Counter())
        if local != total:
            differ = sorted(set(local) ^ set(total) | {w for w in local if local[w] != total[w]})
            print(f"wordcount: MISMATCH with a single-process count: {differ[:10]}")
            return 1
        print("checked: the same counts as a single-process count")
    return 0


if __name__ == "__main__":
    sys.exit(main())
