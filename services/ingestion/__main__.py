"""`python -m services.ingestion`: run the ingestion service (HTTP on its port, with its SQS worker)."""

from services.ingestion import SERVICE
from services.ingestion.app import create_app
from shared.service import serve

if __name__ == "__main__":
    serve(SERVICE, create_app)
