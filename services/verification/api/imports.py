"""``PUT /verification/cases/{id}/imported-label``: a public dataset's label as pre-verified ground truth.

Used by ``radloop import-dataset`` (radloop/datasets/). The label takes the reads' own path
(:meth:`services.verification.service.Verification.import_label`): the labeller recorded is the dataset
(``dataset:<source>``), never the person who ran the import, and the resolution is ``imported``.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from services.verification.api.deps import DepsDep
from shared.auth import AdminUser

router = APIRouter(prefix="/verification", tags=["verification"])


class ImportedLabelIn(BaseModel):
    """A dataset's label for one stored case."""

    model_config = ConfigDict(extra="forbid")

    label: Literal["pneumonia", "normal", "indeterminate"]
    #: the dataset (``rsna-pneumonia``, ``chestxray14``, ``chexpert``): recorded as the label's source and labeller
    source: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$")


@router.put("/cases/{case_id}/imported-label",
            summary="Record a public dataset's label as the case's pre-verified final label (admin; idempotent).",
            responses={404: {"description": "no stored instance has that SOP Instance UID (yet)"},
                       409: {"description": "a radiologist read, is reading or decided the case"}})
async def put_imported_label(case_id: str, body: ImportedLabelIn, deps: DepsDep, user: AdminUser) -> dict[str, Any]:
    """Make the dataset's label final (``result``: imported, amended or unchanged); audited with its source."""
    v = deps.verification
    cid = v.case_id(case_id)
    out = await v.import_label(cid, body.source, body.label)
    await deps.rt.audit.record(user, "case.import_label", {"case_id": cid, "source": body.source,
                                                           "result": out.get("result")})
    return out
