"""Presigned URLs of heatmaps in the images bucket (the viewer fetches them directly)."""

from __future__ import annotations

from shared.aws import AwsClients


class HeatmapLinks:
    """Short-lived GET URLs for heatmap objects."""

    def __init__(self, clients: AwsClients, ttl_s: int) -> None:
        self.clients = clients
        self.bucket = clients.settings.topology.bucket("images")
        self.ttl_s = ttl_s

    async def url(self, key: str) -> str:
        """A presigned GET URL of ``key``, valid for ``ttl_s`` seconds."""
        s3 = await self.clients.s3()
        return str(await s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                   ExpiresIn=self.ttl_s))
