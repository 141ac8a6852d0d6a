"""UIDs become storage keys only when they are exactly digits and dots (no trailing newline slips through ``$``)."""

from __future__ import annotations

import pytest

from shared.uids import validate_uid


@pytest.mark.parametrize("bad", ["1.2.3\n", "1.2.3\r\n", "\n1.2.3", "1..2", "1.2.", "1.2.3a", "1" * 65, ""])
def test_invalid_uids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_uid(bad)


def test_valid_uid_is_returned_unchanged() -> None:
    assert validate_uid("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"
