"""`python -m services.ingestion.worker`: the ingestion SQS worker alone, without HTTP.

``radloop up`` runs the worker inside the service's HTTP process (one process per service); this entry point is for
deployments that scale the worker separately.
"""

from services.ingestion import SERVICE
from services.ingestion.bootstrap import worker_startup
from services.ingestion.handlers import handlers
from shared.worker import main

if __name__ == "__main__":
    main(SERVICE, handlers, worker_startup)
