"""`python -m services.pipeline_orchestrator`: run the orchestrator service (HTTP on its port, with its SQS worker)."""

from services.pipeline_orchestrator.bootstrap import SPEC
from shared.service import serve

if __name__ == "__main__":
    serve(SPEC)
