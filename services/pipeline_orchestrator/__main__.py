"""`python -m services.pipeline_orchestrator`: run the orchestrator service (HTTP on its port, with its SQS worker)."""

from services.pipeline_orchestrator import SERVICE
from services.pipeline_orchestrator.app import create_app
from shared.service import serve

if __name__ == "__main__":
    serve(SERVICE, create_app)
