"""`python -m services.triage.worker`: the triage SQS worker alone, without HTTP.

``radloop up`` runs the worker inside the service's HTTP process (one process per service); this entry point is for
deployments that scale the worker separately.
"""

import asyncio

from services.triage import SERVICE
from services.triage.bootstrap import startup
from services.triage.handlers import handlers
from services.triage.settings import TriageSettings
from shared.worker import run_worker

if __name__ == "__main__":
    _settings = TriageSettings()
    asyncio.run(run_worker(SERVICE, handlers, settings=_settings, startup=startup,
                           concurrency=_settings.triage_concurrency))
