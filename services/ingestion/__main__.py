"""`python -m services.ingestion`: run the ingestion service (HTTP on its port, with its SQS worker and DIMSE SCP)."""

from services.ingestion.bootstrap import SPEC
from shared.service import serve

if __name__ == "__main__":
    serve(SPEC)
