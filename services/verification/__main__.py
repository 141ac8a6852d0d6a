"""`python -m services.verification`: run the verification service (HTTP on its port, with its SQS worker)."""

from services.verification.bootstrap import SPEC
from shared.service import serve

if __name__ == "__main__":
    serve(SPEC)
