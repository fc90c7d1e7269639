"""One sentence per problem of a pydantic ValidationError, for messages that must name the bad key
and value."""

from __future__ import annotations

from pydantic import ValidationError


def validation_problems(exc: ValidationError, root: str) -> str:
    """`where: what (got value)` for every error, joined by "; "; `root` names a problem with the
    whole input."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or root}: {e['msg']} (got {e.get('input')!r})"
        for e in exc.errors()
    )
