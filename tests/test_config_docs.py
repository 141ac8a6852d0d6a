"""docs/config.md is generated from the settings classes (scripts/gen_config_docs.py); it must not be stale."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gen_config_docs  # noqa: E402

from radloop.ops.config import catalogue  # noqa: E402


def test_config_reference_is_current() -> None:
    assert (ROOT / "docs" / "config.md").read_text() == gen_config_docs.render(), \
        "docs/config.md is stale: run `make docs`"


def test_every_setting_is_in_the_reference_with_a_description() -> None:
    rows = catalogue()
    assert len(rows) > 100  # every service's settings, not only the shared ones
    undocumented = [f"{r.owner}.{r.name}" for r in rows if not r.description.strip()]
    assert not undocumented, f"settings without a description (add a #: comment or Field(description=...)): " \
                             f"{undocumented}"
    text = gen_config_docs.render()
    table_rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(table_rows) == len(rows)
    for r in rows:
        assert all(f"`{e}`" in text for e in r.env), r.name
    assert "(undocumented)" not in text


def test_repository_paths_print_relative_to_the_repository() -> None:
    text = gen_config_docs.render()
    assert str(ROOT) not in text
    (row,) = [line for line in text.splitlines() if line.startswith("| `viewer_dist` |")]
    assert "`'viewer/dist'`" in row


def test_the_check_fails_on_a_stale_file_and_passes_once_regenerated(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "config.md"
    monkeypatch.setattr(gen_config_docs, "OUT", out)
    monkeypatch.setattr(sys, "argv", ["gen_config_docs.py", "--check"])
    assert gen_config_docs.main() == 1  # missing
    out.write_text(gen_config_docs.render().replace("| `port` |", "| `prt` |"))
    assert gen_config_docs.main() == 1  # edited by hand
    monkeypatch.setattr(sys, "argv", ["gen_config_docs.py"])
    assert gen_config_docs.main() == 0
    monkeypatch.setattr(sys, "argv", ["gen_config_docs.py", "--check"])
    assert gen_config_docs.main() == 0
