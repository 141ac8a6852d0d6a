"""radloop verification service."""

SERVICE = "verification"
