"""The operator's commands of ``radloop`` (models, runs, worklist, send, config, dlq) and their HTTP client.

Each module holds one command group; :mod:`radloop.ops.client` is the one place that resolves ``--url`` and the
token, talks HTTP and turns failures into a sentence and an exit code (see :class:`~radloop.ops.client.OpsError`).
"""
