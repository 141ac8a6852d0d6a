"""radloop triage service."""

SERVICE = "triage"
