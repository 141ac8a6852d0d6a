"""`python -m services.registry`: run the registry service (HTTP on its port, with its SQS worker)."""

from services.registry.bootstrap import SPEC
from shared.service import serve

if __name__ == "__main__":
    serve(SPEC)
