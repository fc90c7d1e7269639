"""Time zones by IANA name (`Asia/Shanghai`) or fixed UTC offset (`+08:00`), as traces and configs
write them."""

from __future__ import annotations

from datetime import timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo


def zone_of(name: str) -> tzinfo:
    """An IANA zone or a fixed UTC offset `+HH:MM`; ValueError showing both forms otherwise."""
    text = (name or "").strip()
    if (
        text[:1] in ("+", "-")
        and len(text) == 6
        and text[3] == ":"
        and text[1:3].isdigit()
        and text[4:6].isdigit()
    ):
        sign = 1 if text[0] == "+" else -1
        return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[4:6])))
    try:
        return ZoneInfo(text)
    except Exception:
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as Asia/Shanghai, UTC, or an "
            "offset like +08:00"
        ) from None
