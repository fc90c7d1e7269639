"""API keys: their token format, their hash at rest, their scopes and the keys file.

A key is a bearer token `rsk_<id>_<secret>`. The id is public (it names the key in logs, in the
keys file and as the principal predictions are bound to); the secret is shown once, when the key is
made, and only its hash is kept: sha256 over the id and the whole token, so two keys never share a
hash and a leaked keys file gives no token. The keys file is JSON:
`{"keys": [{"id": ..., "sha256": ..., "scopes": [...], "name": ..., "created": ...}]}`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SCOPES = ("predict", "feedback", "admin")
KEYS_FILE_ENV = "RECSERVE_API_KEYS_FILE"
TOKEN_PREFIX = "rsk"
KEY_ID_PATTERN = re.compile(r"[a-z0-9]{4,32}")
_TOKEN = re.compile(rf"{TOKEN_PREFIX}_([a-z0-9]{{4,32}})_([A-Za-z0-9_-]{{20,200}})")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class KeysFileError(ValueError):
    """The keys file cannot be read as keys; the message names the file and the fix."""


def hash_token(key_id: str, token: str) -> str:
    """The hash a key is stored under: sha256 of `<id>:<token>`, hex."""
    return hashlib.sha256(f"{key_id}:{token}".encode()).hexdigest()


def key_id_of(token: str) -> str | None:
    """The key id a token names, or None when the text is not one of our tokens."""
    match = _TOKEN.fullmatch(token)
    return match.group(1) if match else None


def new_token(key_id: str | None = None) -> tuple[str, str]:
    """A fresh (key id, token); the id is random unless given."""
    key_id = key_id or secrets.token_hex(4)
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise KeysFileError(f"key id {key_id!r} must be 4-32 lowercase letters or digits")
    return key_id, f"{TOKEN_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: never the token, only its hash."""

    key_id: str
    sha256: str
    scopes: frozenset[str]
    name: str = ""
    created: str = ""

    def as_dict(self) -> dict:
        """The key's entry in the keys file."""
        return {
            "id": self.key_id,
            "sha256": self.sha256,
            "scopes": sorted(self.scopes),
            "name": self.name,
            "created": self.created,
        }


def check_scopes(scopes: list[str] | tuple[str, ...] | frozenset[str]) -> frozenset[str]:
    """The scopes as a set; unknown ones are an error naming the known ones."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise KeysFileError(f"scopes must be a non-empty subset of {list(SCOPES)}, got {scopes}")
    return frozenset(scopes)


def keys_from_document(doc: object, where: str) -> list[ApiKey]:
    """The keys of a parsed keys file; a malformed entry is an error naming its position."""
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise KeysFileError(f'{where}: expected {{"keys": [...]}} (make keys with `recserve keys`)')
    keys: dict[str, ApiKey] = {}
    for position, entry in enumerate(entries):
        at = f"{where}: keys[{position}]"
        if not isinstance(entry, dict):
            raise KeysFileError(f"{at}: expected an object")
        key_id, digest = entry.get("id"), entry.get("sha256")
        if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
            raise KeysFileError(f"{at}: id must be 4-32 lowercase letters or digits")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise KeysFileError(f"{at}: sha256 must be 64 hex digits (the hash, never the token)")
        if key_id in keys:
            raise KeysFileError(f"{at}: id {key_id!r} appears twice")
        scopes = entry.get("scopes")
        try:
            checked = check_scopes(scopes if isinstance(scopes, list) else [])
        except KeysFileError as exc:
            raise KeysFileError(f"{at}: {exc}") from None
        keys[key_id] = ApiKey(
            key_id, digest, checked, str(entry.get("name", "")), str(entry.get("created", ""))
        )
    return list(keys.values())


@dataclass
class KeysFile:
    """A keys file on disk; written whole, atomically, readable by its owner alone."""

    path: Path
    keys: list[ApiKey] = field(default_factory=list)

    @classmethod
    def read(cls, path: str | os.PathLike, missing_ok: bool = False) -> "KeysFile":
        """The keys in `path` (none when it is missing and `missing_ok`)."""
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            if missing_ok:
                return cls(path)
            raise KeysFileError(
                f"{path}: no such keys file (make one with `recserve keys add`)"
            ) from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeysFileError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
        return cls(path, keys_from_document(doc, str(path)))

    def write(self) -> None:
        """Replace the file with these keys (mode 0600)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"keys": [k.as_dict() for k in self.keys]}, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def keys_file_path(configured: str | None, environ: dict | os._Environ = os.environ) -> Path | None:
    """Where the keys are: the config's `auth.keys_file`, else $RECSERVE_API_KEYS_FILE, else
    nowhere (no keys: the API answers without authentication, on loopback only)."""
    chosen = configured or environ.get(KEYS_FILE_ENV) or None
    return Path(chosen).expanduser() if chosen else None
