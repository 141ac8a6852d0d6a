"""HTTP routes of the streaming gateway."""
