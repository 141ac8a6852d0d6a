"""`python -m services.verification`: run the verification service (HTTP on its port, with its SQS worker)."""

from services.verification import SERVICE
from services.verification.app import create_app
from services.verification.settings import VerificationSettings
from shared.service import serve

if __name__ == "__main__":
    serve(SERVICE, create_app, VerificationSettings())
