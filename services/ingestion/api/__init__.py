"""STOW-RS routes of the ingestion service."""
