"""`python -m services.interop`: run the interop service (HTTP on its port, its SQS worker and the Q/R SCP)."""

from services.interop.bootstrap import SPEC
from shared.service import serve

if __name__ == "__main__":
    serve(SPEC)
