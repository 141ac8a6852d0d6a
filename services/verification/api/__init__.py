"""HTTP routes of the verification service (under ``/verification``)."""
