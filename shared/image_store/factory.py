"""Open the image store the settings name (``RADLOOP_IMAGE_STORE``)."""

from __future__ import annotations

from shared.aws import AwsClients
from shared.image_store import ImageStore
from shared.image_store.settings import ImageStoreSettings


def open_image_store(settings: ImageStoreSettings, clients: AwsClients) -> ImageStore:
    """The store ``settings.image_store`` names, over the process's pooled clients."""
    if settings.image_store == "healthimaging":
        from shared.image_store.healthimaging import HealthImagingStore

        return HealthImagingStore(settings, clients)
    from shared.image_store.radloop import RadloopStore

    return RadloopStore(settings, clients)
