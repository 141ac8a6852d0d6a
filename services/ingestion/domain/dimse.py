"""The DIMSE C-STORE SCP (pynetdicom), run inside the ingestion service process.

pynetdicom serves each association on its own thread. A C-STORE hands the received Part 10 bytes to the shared
pipeline on the service's event loop and waits for it, so the status goes back only after the original, the frames,
the metadata and the index items are durable:

- 0x0000 success (also for an instance already stored with the same content);
- a failure status with the pipeline's reason in ErrorComment: 0xA700 out of resources, 0xA900 data set does not
  match SOP class, 0xC000 cannot understand, 0x0111 duplicate SOP instance with other content.

C-ECHO is answered. Calling AE titles come from ``dimse_allowed_calling_aes`` (``*`` allows any, local only); the
called AE title must be ours.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom import sop_class as sc

from services.ingestion.domain.pipeline import IngestPipeline
from services.ingestion.settings import IngestionSettings
from shared.dicom.errors import OUT_OF_RESOURCES, DicomRejection

log = logging.getLogger(__name__)

#: The storage SOP classes accepted (the issue's list, plus their enhanced and multi-frame variants).
STORAGE_SOP_CLASSES: tuple[UID, ...] = (
    sc.CTImageStorage, sc.EnhancedCTImageStorage,
    sc.MRImageStorage, sc.EnhancedMRImageStorage,
    sc.ComputedRadiographyImageStorage,
    sc.DigitalXRayImageStorageForPresentation, sc.DigitalXRayImageStorageForProcessing,
    sc.UltrasoundImageStorage, sc.UltrasoundMultiFrameImageStorage,
    sc.SecondaryCaptureImageStorage, sc.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage, sc.MultiFrameTrueColorSecondaryCaptureImageStorage,
    sc.NuclearMedicineImageStorage, sc.PositronEmissionTomographyImageStorage,
)


def decodable_transfer_syntaxes() -> list[UID]:
    """Native syntaxes plus every compressed syntax pydicom has a working decoder for here."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEG2000TransferSyntaxes,
        JPEGLSTransferSyntaxes,
        JPEGTransferSyntaxes,
        RLELossless,
    )

    out = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
    for uid in [*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes, RLELossless]:
        try:
            if get_decoder(uid).is_available:
                out.append(uid)
        except (NotImplementedError, ValueError):
            continue
    return out


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # LO: 64 characters at most
    return ds


class StorageSCP:
    def __init__(self, pipeline: IngestPipeline, settings: IngestionSettings, loop: asyncio.AbstractEventLoop) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.loop = loop
        self.server: Any = None
        self.stats = {"stored": 0, "duplicate": 0, "failed": 0, "echo": 0}

    def _ae(self) -> AE:
        ae = AE(ae_title=self.settings.dimse_ae_title)
        allowed = [a for a in self.settings.dimse_allowed_calling_aes if a != "*"]
        ae.require_calling_aet = [] if "*" in self.settings.dimse_allowed_calling_aes else allowed
        ae.require_called_aet = True
        ae.maximum_associations = 16
        ae.network_timeout = 60
        ae.dimse_timeout = self.settings.dimse_store_timeout_s
        syntaxes = decodable_transfer_syntaxes()
        for cls in STORAGE_SOP_CLASSES:
            ae.add_supported_context(cls, syntaxes)
        ae.add_supported_context(sc.Verification)
        return ae

    def start(self) -> None:
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        self.server = self._ae().start_server((self.settings.dimse_host, self.settings.dimse_port), block=False,
                                              evt_handlers=handlers)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _on_echo(self, event: Any) -> int:
        self.stats["echo"] += 1
        return 0x0000

    def _on_store(self, event: Any) -> Any:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # pynetdicom could not assemble a Part 10 object from what was sent
            self.stats["failed"] += 1
            return _status(0xC000, f"Cannot understand the data set: {type(exc).__name__}")
        fut = asyncio.run_coroutine_threadsafe(
            self.pipeline.ingest(data, source="dimse", calling_ae=calling), self.loop)
        try:
            result = fut.result(timeout=self.settings.dimse_store_timeout_s)
        except DicomRejection as rej:
            self.stats["failed"] += 1
            return _status(rej.failure_reason, rej.reason)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            self.stats["failed"] += 1
            return _status(OUT_OF_RESOURCES, "Storing the instance took too long; it was not stored.")
        except Exception:
            log.exception("C-STORE failed")
            self.stats["failed"] += 1
            return _status(OUT_OF_RESOURCES, "The instance could not be stored durably; retry later.")
        self.stats[result.status] += 1
        return 0x0000
