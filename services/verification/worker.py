"""`python -m services.verification.worker`: the verification SQS worker alone, without HTTP.

``radloop up`` runs the worker inside the service's HTTP process (one process per service); this entry point is for
deployments that scale the worker separately.
"""

import asyncio

from services.verification import SERVICE
from services.verification.bootstrap import startup
from services.verification.handlers import handlers
from services.verification.settings import VerificationSettings
from shared.worker import run_worker

if __name__ == "__main__":
    asyncio.run(run_worker(SERVICE, handlers, settings=VerificationSettings(), startup=startup))
