"""`python -m services.pipeline_orchestrator.worker`: the pipeline orchestrator SQS worker alone, without HTTP.

``radloop up`` runs the worker inside the service's HTTP process (one process per service); this entry point is for
deployments that scale the worker separately. The ticker (tracking, follow-ups, schedule) runs here too.
"""

from services.pipeline_orchestrator.bootstrap import SPEC
from shared.service import worker_main

if __name__ == "__main__":
    worker_main(SPEC)
