"""radloop registry service."""

SERVICE = "registry"
