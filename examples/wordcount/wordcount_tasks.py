"""The workers' half of the word-count example: the one task they run.

Start workers with ``distq worker --tasks wordcount_tasks`` (this folder on
``PYTHONPATH``): every function here marked ``@distq.task`` is registered, under the
name ``wordcount_tasks:<function>`` that the job sends.
"""

from __future__ import annotations

import re
from collections import Counter

import distq

# a word: letters only, any alphabet ("naïve", "Straße", "слово"); digits and _ split words
WORD = re.compile(r"[^\W\d_]+")


def words(text: str) -> Counter[str]:
    """How often each word occurs in ``text``, case folded."""
    return Counter(WORD.findall(text.casefold()))


@distq.task
def count_words(text: str) -> dict[str, int]:
    """Word counts of one piece of text (a task's result must be a JSON value: a dict)."""
    return dict(words(text))
