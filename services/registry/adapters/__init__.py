"""The registry's adapters: the ``models`` table and champion pointer, SageMaker model packages, S3 artefacts."""
