"""The radloop command line and the local runtime (embedded AWS, process supervisor, entry proxy).

Services require ``RADLOOP_ENVIRONMENT`` and refuse to start without it. This package is the local-machine tool (the
CLI, ``radloop up``, the demo, benchmarks), so a process that imports it runs on a developer's machine: it defaults
the variable to ``local`` for itself and the services it starts, and never overrides a value that is set.
"""

import os

os.environ.setdefault("RADLOOP_ENVIRONMENT", "local")
