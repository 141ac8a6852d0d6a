"""radloop's test suite. Tests run the local platform: ``RADLOOP_ENVIRONMENT`` defaults to ``local`` here (services
themselves refuse to start without it)."""

import os

os.environ.setdefault("RADLOOP_ENVIRONMENT", "local")
