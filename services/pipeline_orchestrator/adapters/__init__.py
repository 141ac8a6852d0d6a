"""The orchestrator's adapters: its DynamoDB state, the dataset manifests in S3, the execution backends."""
