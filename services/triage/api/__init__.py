"""HTTP routes of the triage service (under ``/triage``)."""
