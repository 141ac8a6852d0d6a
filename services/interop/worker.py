"""`python -m services.interop.worker`: the interop SQS worker (results and forwarding) alone, without HTTP.

``radloop up`` runs the worker inside the service's HTTP process (one process per service); this entry point is for
deployments that scale the worker separately. The Q/R SCP runs in the HTTP process only.
"""

from services.interop.bootstrap import SPEC
from shared.service import worker_main

if __name__ == "__main__":
    worker_main(SPEC)
