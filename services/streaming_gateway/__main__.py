"""`python -m services.streaming_gateway`: run the streaming gateway service (HTTP on its port)."""

from services.streaming_gateway.bootstrap import SPEC
from shared.forwarded import distrust_uvicorn_proxy_headers
from shared.service import serve

if __name__ == "__main__":
    # uvicorn would otherwise replace the peer address and scheme with X-Forwarded-For/-Proto from any loopback
    # peer (its FORWARDED_ALLOW_IPS default). The gateway decides which proxies to believe itself
    # (RADLOOP_TRUSTED_PROXIES, api/deps.base_url), so it needs the connection's own peer address: trust nobody here.
    distrust_uvicorn_proxy_headers()
    serve(SPEC)
