"""What a request id may look like: the one rule the ingress applies to a client's X-Request-Id
and the feedback parser to the ids it is asked to join.

The service's own ids (Ray's uuid4 strings, HAProxy's uuids) fit it, so an id outside it can
never name a prediction; refusing it early keeps client text out of logs, stores and replies.
"""

from __future__ import annotations

import re

MAX_REQUEST_ID_CHARS = 64
REQUEST_ID_CHARS = "letters, digits, '-', '_', '.' and ':'"
REQUEST_ID_PATTERN = r"[A-Za-z0-9_.:-]+"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def request_id_problem(value: str) -> str | None:
    """Why `value` cannot be a request id (worded for the client), or None when it can."""
    if not value:
        return "must not be empty"
    if len(value) > MAX_REQUEST_ID_CHARS:
        return f"is {len(value)} characters long, over the limit of {MAX_REQUEST_ID_CHARS}"
    if not _REQUEST_ID.fullmatch(value):
        return f"may hold only {REQUEST_ID_CHARS}"
    return None


# '/' is outside REQUEST_ID_PATTERN, so a bound id never equals an id a client can send or ask for.
PRINCIPAL_SEPARATOR = "/"


def bound_request_id(principal: str | None, request_id: str) -> str:
    """The id a prediction is stored under: bound to the API key that made it, so another key
    can neither label it nor overwrite it by reusing its X-Request-Id. Without keys (no
    principal) the id is stored as sent, as before keys existed."""
    return f"{principal}{PRINCIPAL_SEPARATOR}{request_id}" if principal else request_id


def unbound_request_id(stored_id: str) -> str:
    """The id the client knows, from the id a prediction is stored under."""
    return stored_id.rpartition(PRINCIPAL_SEPARATOR)[2]
