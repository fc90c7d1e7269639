"""One sentence per problem of a pydantic ValidationError, for messages that must name the bad key
and value."""

from __future__ import annotations

from pydantic import ValidationError


def validation_problems(exc: ValidationError, root: str, secret_keys: tuple[str, ...] = ()) -> str:
    """`where: what (got value)` for every error, joined by "; "; `root` names a problem with the
    whole input. The value of a key named in `secret_keys` (or of anything under it) is never
    quoted: the message reaches logs and terminals."""

    def shown(e) -> str:
        if any(str(part) in secret_keys for part in e["loc"]):
            return "(value not shown: it may be a secret)"
        return f"(got {e.get('input')!r})"

    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or root}: {e['msg']} {shown(e)}"
        for e in exc.errors(include_input=True, include_url=False)
    )
