"""`python -m services.streaming_gateway`: run the streaming gateway service (HTTP on its port)."""

from services.streaming_gateway import SERVICE
from services.streaming_gateway.app import create_app
from services.streaming_gateway.settings import GatewaySettings
from shared.service import serve

if __name__ == "__main__":
    serve(SERVICE, create_app, GatewaySettings())
