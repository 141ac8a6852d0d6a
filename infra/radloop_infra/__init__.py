"""radloop's AWS CDK app: renders :mod:`shared.topology` onto ECS Fargate, EventBridge, SQS, S3, DynamoDB and SageMaker.

Nothing here re-declares a resource name: buckets, tables, queues, rules and the model package group come from
``shared.topology.build_topology(prefix)``; the ALB path routing from ``shared.topology.ROUTES``; ports from
``shared.settings.DEFAULT_PORTS``. What infra adds is data of its own: the environments (:mod:`.config`) and what each
service is allowed to do (:mod:`.needs`).
"""
