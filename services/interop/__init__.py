"""radloop interop service: AI results and verified reads as DICOM, forwarding them to the hospital's systems, and
the DIMSE Query/Retrieve SCP (docs/interop.md)."""

SERVICE = "interop"
