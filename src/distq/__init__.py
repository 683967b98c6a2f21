"""distq: a distributed master/worker task system with at-least-once delivery.

One job is split into small tasks; a master hands them to workers over
``multiprocessing.managers`` (the embedded default), Redis or RabbitMQ, and collects
each result exactly once.
"""

__version__ = "0.1.0"
