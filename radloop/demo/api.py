"""The platform's HTTP APIs as the demo's actors use them, through the entry proxy, each with a token of its role."""

from __future__ import annotations

from typing import Any

import httpx

from shared.auth import mint_token
from shared.settings import Settings


class PlatformApi:
    """One HTTP client for the whole demo (the PACS, the radiologists and the ML engineer share its connections)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http = httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0))
        #: the entry proxy's URL, known once the platform is up
        self.base = ""

    def token(self, role: str, subject: str | None = None) -> str:
        """A local development token for ``role`` (``subject`` names the user, e.g. one radiologist)."""
        return mint_token(self.settings, role, subject=subject)

    def get(self, path: str, role: str = "admin", **params: Any) -> Any:
        """GET ``path`` as ``role``; the JSON body, or :class:`httpx.HTTPStatusError` on an error status."""
        assert self.base, "the platform is not up"
        r = self.http.get(f"{self.base}{path}", params=params, headers={"Authorization": f"Bearer {self.token(role)}"})
        r.raise_for_status()
        return r.json()

    def worklist(self, **params: Any) -> list[dict[str, Any]]:
        """Every open case, in worklist order (following the cursor)."""
        items: list[dict[str, Any]] = []
        cursor = None
        for _ in range(1000):
            q = dict(params, limit=200)
            if cursor:
                q["cursor"] = cursor
            page = self.get("/verification/worklist", role="radiologist", **q)
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return items

    def worklist_ids(self) -> set[str]:
        """The SOP instance UIDs (or case ids) on the worklist."""
        return {i.get("sop_uid") or i.get("case_id") for i in self.worklist()}

    def runs(self) -> list[dict[str, Any]]:
        """The orchestrator's training runs."""
        return self.get("/orchestrator/trainings", role="ml")["runs"]  # type: ignore[no-any-return]

    def models(self) -> list[dict[str, Any]]:
        """The registry's model summaries."""
        return self.get("/registry/models", role="ml")["models"]  # type: ignore[no-any-return]

    def model(self, version: int) -> dict[str, Any]:
        """One model version in full (metrics, lineage, decision history)."""
        return self.get(f"/registry/models/{version}", role="ml")  # type: ignore[no-any-return]

    def champion(self) -> dict[str, Any] | None:
        """The current champion, or None before any model was approved."""
        r = self.http.get(f"{self.base}/registry/models/champion",
                          headers={"Authorization": f"Bearer {self.token('ml')}"})
        return r.json() if r.status_code == 200 else None

    def close(self) -> None:
        """Close the HTTP client."""
        self.http.close()
