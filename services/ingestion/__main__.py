"""`python -m services.ingestion`: run the ingestion service (HTTP on its port, with its SQS worker and DIMSE SCP)."""

from services.ingestion import SERVICE
from services.ingestion.app import create_app
from services.ingestion.settings import IngestionSettings
from shared.service import serve

if __name__ == "__main__":
    serve(SERVICE, create_app, IngestionSettings())
