"""Bad option values are refused with exit 2 and a sentence, never a traceback (found by a review)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from radloop.cli import app
from radloop.datasets.importer import Journal

ENV = {"RADLOOP_ENVIRONMENT": "local", "RADLOOP_URL": "http://127.0.0.1:9"}


@pytest.mark.parametrize("args", [
    ["runs", "logs", "run-1", "-f", "--interval", "-1"],        # sleep of a negative length: a traceback
    ["runs", "logs", "run-1", "-f", "--interval", "0"],         # 663 requests in 3 s
    ["send", "x.dcm", "--via", "dimse", "--dimse-port", "99999"],  # pynetdicom's OverflowError
    ["token", "--ttl", "-5"],                                    # an already expired token
    ["traces", "--last", "0"],                                   # every trace
    ["runs", "show", "../../registry/models/1"],                 # another route of the entry point
])
def test_bad_values_are_refused_before_anything_runs(args: list[str]) -> None:
    r = CliRunner().invoke(app, args, env=ENV)
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output


def test_a_journal_that_cannot_be_written_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        Journal(tmp_path)
