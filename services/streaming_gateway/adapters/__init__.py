"""Adapters of the streaming gateway: the instance-index reader (DynamoDB), the frame store (S3), frame audit."""
