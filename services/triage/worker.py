"""`python -m services.triage.worker`: the triage SQS worker alone, without HTTP.

``radloop up`` runs the worker inside the service's HTTP process (one process per service); this entry point is for
deployments that scale the worker separately.
"""

from services.triage import SERVICE
from services.triage.bootstrap import startup
from services.triage.handlers import handlers
from shared.worker import main

if __name__ == "__main__":
    main(SERVICE, handlers, startup)
