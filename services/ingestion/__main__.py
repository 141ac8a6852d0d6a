"""`python -m services.ingestion`: run the ingestion service (HTTP on its port, with its SQS worker and DIMSE SCP)."""

from services.ingestion.bootstrap import SPEC
from shared.forwarded import distrust_uvicorn_proxy_headers
from shared.service import serve

if __name__ == "__main__":
    # STOW-RS RetrieveURLs believe forwarded headers only from RADLOOP_TRUSTED_PROXIES (api/stow.py), judged by the
    # connection's own peer address, which uvicorn would otherwise take from a loopback client's X-Forwarded-For.
    distrust_uvicorn_proxy_headers()
    serve(SPEC)
