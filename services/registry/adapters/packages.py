"""SageMaker model packages: the system of record of each version's approval status."""

from __future__ import annotations

from typing import Any

from shared.aws import AwsClients


class ModelPackages:
    """``DescribeModelPackage`` and ``UpdateModelPackage`` on the deployment's package group."""

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients

    async def describe_raw(self, arn: str) -> dict[str, Any]:
        """The package as SageMaker describes it."""
        sm = await self.clients.sagemaker()
        return await sm.describe_model_package(ModelPackageName=arn)  # type: ignore[no-any-return]

    async def describe(self, arn: str) -> dict[str, Any]:
        """The package in a JSON-friendly subset (what the HTTP API shows)."""
        d = await self.describe_raw(arn)
        return {"arn": d.get("ModelPackageArn"), "group": d.get("ModelPackageGroupName"),
                "package_version": d.get("ModelPackageVersion"), "approval_status": d.get("ModelApprovalStatus"),
                "approval_description": d.get("ApprovalDescription"), "created_at": str(d.get("CreationTime", "")),
                "metadata": d.get("CustomerMetadataProperties", {})}

    async def set_status(self, arn: str, status: str, reason: str) -> None:
        """``Approved`` or ``Rejected``, with the decision's reason as the approval description."""
        sm = await self.clients.sagemaker()
        await sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus=status,
                                      ApprovalDescription=reason[:1000])
