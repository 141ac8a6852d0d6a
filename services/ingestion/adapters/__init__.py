"""Ingestion's adapters: DynamoDB claims, the outbox, S3 objects and the drop folder, the DIMSE SCP."""
