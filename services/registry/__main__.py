"""`python -m services.registry`: run the registry service (HTTP on its port, with its SQS worker)."""

from services.registry import SERVICE
from services.registry.app import create_app
from shared.service import serve

if __name__ == "__main__":
    serve(SERVICE, create_app)
