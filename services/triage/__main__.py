"""`python -m services.triage`: run the triage service (HTTP on its port, with its SQS worker)."""

from services.triage import SERVICE
from services.triage.app import create_app
from services.triage.settings import TriageSettings
from shared.service import serve

if __name__ == "__main__":
    serve(SERVICE, create_app, TriageSettings())
