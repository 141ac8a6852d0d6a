"""The demo points at the workstation: the console line of ``--keep-running`` and the report's link."""

from __future__ import annotations

from pathlib import Path

from radloop.demo.report import write_report
from radloop.demo.run import workstation_links


def test_report_links_the_worklist_and_its_sign_in(tmp_path: Path) -> None:
    links = workstation_links("http://127.0.0.1:8080", kept_running=True)
    assert links == {"worklist_url": "http://127.0.0.1:8080/viewer/worklist/",
                     "signin_url": "http://127.0.0.1:8080/viewer/worklist/#/signin", "live": True}
    html = write_report(tmp_path, {"workstation": links}).read_text()
    assert "<a href='http://127.0.0.1:8080/viewer/worklist/'>The AI-ordered worklist</a>" in html
    assert "href='http://127.0.0.1:8080/viewer/worklist/#/signin'" in html
    assert "token=" not in html
