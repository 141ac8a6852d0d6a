"""`python -m services.triage`: run the triage service (HTTP on its port, with its SQS worker)."""

from services.triage.bootstrap import SPEC
from shared.service import serve

if __name__ == "__main__":
    serve(SPEC)
