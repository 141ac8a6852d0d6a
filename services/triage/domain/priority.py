"""The worklist priority a score gives, and the reasons an applicable image is (still) unscored."""

from __future__ import annotations

#: The reason recorded for an applicable image that arrived before any model was approved (it joins the backlog).
AWAITING_MODEL = "no approved model yet; the worklist orders this image by arrival until a model scores it"
#: The reason an image leaves the backlog unscored: a radiologist read it before any model was approved.
VERIFIED_BEFORE_MODEL = "verified by a radiologist before any model was approved; no longer awaiting triage"


def priority_for(probability: float | None, threshold: float | None) -> str:
    """``urgent`` when the model calls the image positive at its operating threshold, else ``routine``."""
    if probability is None or threshold is None:
        return "routine"
    return "urgent" if probability >= threshold else "routine"
