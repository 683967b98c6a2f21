"""The fault-injection suite: jobs that must survive crashes, outages and partitions.

``make test`` runs it short; ``make faults`` runs it long (``DISTQ_FAULTS_FULL=1``) and
renders every scenario's figures into ``tests/faults/results.md`` and the README. How each
fault is injected is in :mod:`faults.conftest` and each scenario's docstring.
"""
