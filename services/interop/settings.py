"""Settings of the interop service (environment variables ``RADLOOP_<FIELD>``; lists and maps as JSON)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.image_store.settings import ImageStoreSettings


class Destination(BaseModel):
    """Where stored results are forwarded: a DICOMweb STOW-RS endpoint or a DIMSE C-STORE SCP."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    kind: Literal["stow", "dimse"]
    #: STOW-RS: the service root (``.../dicomweb``); instances are POSTed to ``{url}/studies``.
    url: str = ""
    #: STOW-RS: the Authorization header value (``Bearer ...`` or ``Basic ...``).
    authorization: str = ""
    #: DIMSE: the called AE title, host and port, and our calling AE title.
    ae_title: str = ""
    host: str = ""
    port: int = 0
    calling_ae_title: str = "RADLOOP"
    #: DIMSE over TLS (PS3.15 B.1): CA bundle to verify the peer; client certificate and key for mutual TLS.
    tls: bool = False
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""

    @model_validator(mode="after")
    def _complete(self) -> Destination:
        if self.kind == "stow" and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"destination {self.name!r}: a STOW-RS destination needs an http(s) url")
        if self.kind == "dimse" and not (self.ae_title and self.host and 0 < self.port < 65536):
            raise ValueError(f"destination {self.name!r}: a DIMSE destination needs ae_title, host and port")
        return self


class MoveDestination(BaseModel):
    """A C-MOVE destination: the AE title a workstation names, and where radloop connects to store to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    port: int = Field(gt=0, lt=65536)
    tls: bool = False


class InteropSettings(ImageStoreSettings):
    """Interop knobs; every field is an env var (``RADLOOP_<FIELD>``, lists and maps as JSON). Originals are read
    through the image store of :class:`~shared.image_store.settings.ImageStoreSettings`."""

    #: TID 4019 Algorithm Name of the triage results.
    interop_algorithm_name: str = "radloop pneumonia triage"
    #: TID 4019 Algorithm Version of the triage results (with ``interop_algorithm_name``).
    interop_algorithm_version: str = "0.1.0"
    #: Build the Grad-CAM Segmentation when triage wrote a heatmap.
    interop_heatmap_seg: bool = True
    #: Where the results are forwarded once stored (empty: nowhere).
    interop_destinations: list[Destination] = []
    #: Forward only radloop's own results (Manufacturer "radloop"), or every stored SR/SEG ("derived").
    interop_forward: Literal["results", "derived"] = "results"
    #: In-flight messages of the worker (result building is CPU work in a thread; sends wait on the network).
    interop_concurrency: int = 4

    # --- Query/Retrieve SCP --------------------------------------------------------------------------------------
    #: C-FIND/C-MOVE/C-GET SCP port (0: no SCP).
    qr_port: int = 0
    #: The address the Query/Retrieve SCP listens on.
    qr_host: str = "127.0.0.1"
    #: The Query/Retrieve SCP's own AE title.
    qr_ae_title: str = "RADLOOP_QR"
    #: Calling AE titles allowed to associate; ["*"] allows any (refused outside environment=local).
    qr_allowed_calling_aes: list[str] = ["*"]
    #: Simultaneous associations.
    qr_max_associations: int = 8
    #: C-MOVE destinations by AE title.
    qr_move_destinations: dict[str, MoveDestination] = {}
    #: Largest number of C-FIND responses to one request (the rest is cut, with a warning in the log).
    qr_max_results: int = 1000
    #: TLS for the SCP: certificate and key (PEM); with a CA file, clients must present a certificate it signed.
    qr_tls_cert_file: str = ""
    #: The private key (PEM) of ``qr_tls_cert_file``.
    qr_tls_key_file: str = ""
    #: With it, clients must present a certificate this CA (PEM) signed.
    qr_tls_ca_file: str = ""

    @model_validator(mode="after")
    def _refuse_wildcards(self) -> InteropSettings:
        if self.environment != "local" and self.qr_port and "*" in self.qr_allowed_calling_aes:
            raise ValueError(f"environment={self.environment!r} refuses a wildcard Q/R calling-AE allow-list: set "
                             "RADLOOP_QR_ALLOWED_CALLING_AES to a JSON list of AE titles")
        return self
