"""Accept negotiation."""

from __future__ import annotations

import pytest

from app.negotiation import choose_media

OFFERED = ["image/png", "application/json"]


@pytest.mark.parametrize(
    ("accept", "expect"),
    [
        (None, "image/png"),
        ("", "image/png"),
        ("*/*", "image/png"),
        ("application/json", "application/json"),
        ("application/*", "application/json"),
        ("image/png;q=0.4, application/json;q=0.9", "application/json"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "image/png"),
        ("application/json, */*;q=0.1", "application/json"),
        ("*/*, image/png;q=0", "application/json"),  # the specific range wins for png
        ("text/html", None),
        ("image/png;q=0, application/json;q=0", None),
        ("image/png;q=abc", None),
    ],
)
def test_choose_media(accept: str | None, expect: str | None) -> None:
    assert choose_media(accept, OFFERED) == expect
