"""radloop ingestion service."""

SERVICE = "ingestion"
