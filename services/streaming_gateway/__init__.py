"""radloop streaming gateway service."""

SERVICE = "streaming_gateway"
