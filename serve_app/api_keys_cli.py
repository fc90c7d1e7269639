"""`recserve keys add|list|revoke`: make, show and revoke API keys in a keys file.

`add` prints the new token once, on stdout; the file keeps only its hash. A running ingress
re-reads the file within `auth.reload_interval_s`, so a revoked key stops working without a
restart. Rotation: add the new key, move the clients to it, revoke the old one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from serve_app.api_keys import (
    KEYS_FILE_ENV,
    ApiKey,
    KeysFile,
    KeysFileError,
    check_scopes,
    hash_token,
    new_token,
)

DEFAULT_KEYS_FILE = Path(".cache/api_keys.json")


def _file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file",
        type=Path,
        default=Path(os.environ.get(KEYS_FILE_ENV) or DEFAULT_KEYS_FILE),
        help=f"the keys file (default ${KEYS_FILE_ENV}, else {DEFAULT_KEYS_FILE})",
    )


def add_key(path: Path, scopes: list[str], name: str = "", key_id: str | None = None) -> str:
    """Add a key with `scopes` to the file at `path`; return its token (shown only now)."""
    keys = KeysFile.read(path, missing_ok=True)
    key_id, token = new_token(key_id)
    if any(k.key_id == key_id for k in keys.keys):
        raise KeysFileError(f"{path}: a key with id {key_id!r} exists; revoke it first")
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    keys.keys.append(ApiKey(key_id, hash_token(key_id, token), check_scopes(scopes), name, created))
    keys.write()
    return token


def revoke_key(path: Path, key_id: str) -> None:
    """Remove the key `key_id` from the file at `path`."""
    keys = KeysFile.read(path)
    kept = [k for k in keys.keys if k.key_id != key_id]
    if len(kept) == len(keys.keys):
        raise KeysFileError(f"{path}: no key with id {key_id!r}")
    keys.keys = kept
    keys.write()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recserve keys`."""
    parser = argparse.ArgumentParser(prog="recserve keys", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="make a key; its token is printed once")
    add.add_argument(
        "--scopes",
        default="predict",
        help="comma-separated: predict, feedback, admin (default %(default)s)",
    )
    add.add_argument("--name", default="", help="who or what the key is for")
    add.add_argument("--id", default=None, help="the key id (default: random)")
    _file_argument(add)
    listing = commands.add_parser("list", help="the keys: id, scopes, name, created")
    _file_argument(listing)
    revoke = commands.add_parser("revoke", help="remove a key")
    revoke.add_argument("key_id")
    _file_argument(revoke)
    args = parser.parse_args(argv)
    try:
        if args.command == "add":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            token = add_key(args.file, scopes, args.name, args.id)
            print(token)
            print(
                f"key added to {args.file}; the token above is not stored anywhere: "
                "give it to the client now",
                file=sys.stderr,
            )
        elif args.command == "list":
            for key in KeysFile.read(args.file).keys:
                print(f"{key.key_id}\t{','.join(sorted(key.scopes))}\t{key.name}\t{key.created}")
        else:
            revoke_key(args.file, args.key_id)
            print(f"key {args.key_id} revoked in {args.file}", file=sys.stderr)
    except KeysFileError as exc:
        print(f"recserve keys: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
