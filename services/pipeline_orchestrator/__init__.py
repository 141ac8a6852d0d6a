"""radloop pipeline orchestrator service."""

SERVICE = "pipeline_orchestrator"
