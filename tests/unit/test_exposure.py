"""What `recserve up` exposes: loopback unless opened with keys, HAProxy's files private and its
stats/exporter on loopback, the Ray token file private, no secrets in the stack's environment,
no Prometheus lifecycle API, JSON-only bodies at the DingTalk bridge."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from serve_app import launcher
from serve_app.api_keys_cli import add_key, revoke_key
from serve_app.exposure import (
    LOCAL_RAY_LOOPBACK,
    config_with,
    configured_keys_file,
    haproxy_env,
    haproxy_wrapper_text,
    is_loopback,
    loopback_ray_env,
    private_dir,
    public_refusal,
    secure_ray_token,
)
from serve_app.monitoring.alerting.alertmanager_config import ReceiverSettings
from serve_app.monitoring.alerting.dingtalk import DingTalkBridge, serve
from serve_app.monitoring.stack import process_specs, reload_state
from serve_app.monitoring.stack_config import StackConfig, render_state
from serve_app.processes import inherited_environment

ROOT = Path(__file__).resolve().parents[2]

# The lines of Ray's HAProxy template the wrapper must change (stats, exporter) and must not (the
# API frontend, which `recserve up --host 0.0.0.0` opens on purpose).
RAY_HAPROXY_CONFIG = """global
    stats socket /x/admin.sock mode 666 level admin expose-fd listeners
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind *:8000
listen stats
  bind *:8404
  stats enable
"""


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("myhost.example", False),
        (None, False),
    ],
)
def test_only_loopback_addresses_count_as_private(host, loopback):
    assert is_loopback(host) is loopback


def test_going_public_needs_a_keys_file_with_a_key(tmp_path):
    keys = tmp_path / "keys.json"
    assert public_refusal("127.0.0.1", None) is None
    assert "without API keys" in public_refusal("0.0.0.0", None)
    assert "Serve: 0.0.0.0" in public_refusal(None, None)
    assert "no such keys file" in public_refusal("0.0.0.0", keys)
    add_key(keys, ["predict"], key_id="pub1")
    assert public_refusal("0.0.0.0", keys) is None
    revoke_key(keys, "pub1")
    assert "holds no key" in public_refusal("0.0.0.0", keys)


def test_recserve_up_refuses_a_public_api_without_keys_before_starting_anything(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("RECSERVE_API_KEYS_FILE", raising=False)
    code = launcher.main(
        [
            "--config",
            str(ROOT / "configs" / "serve_config.yaml"),
            "--host",
            "0.0.0.0",
            "--no-stack",
            "--stack-dir",
            str(tmp_path / "stack"),
        ]
    )
    assert code == 2
    assert "refusing to serve the API on http_options.host 0.0.0.0" in capsys.readouterr().err
    assert not (tmp_path / "stack").exists()


def test_the_default_config_serves_loopback():
    doc = yaml.safe_load((ROOT / "configs" / "serve_config.yaml").read_text())
    assert is_loopback(doc["http_options"]["host"])


def test_the_config_copy_opens_the_host_and_names_the_keys(tmp_path):
    source = ROOT / "configs" / "serve_config.yaml"
    keys = tmp_path / "keys.json"
    copy = config_with(source, tmp_path / "out" / "serve.yaml", "0.0.0.0", keys)
    doc = yaml.safe_load(copy.read_text())
    assert doc["http_options"]["host"] == "0.0.0.0"
    assert doc["applications"][0]["args"]["auth"]["keys_file"] == str(keys.resolve())
    assert configured_keys_file(copy, {}) == keys.resolve()
    assert configured_keys_file(source, {"RECSERVE_API_KEYS_FILE": "/k"}) == Path("/k")


def test_the_haproxy_wrapper_binds_stats_and_exporter_to_loopback_and_runs_the_real_binary(
    tmp_path,
):
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_HAPROXY_CONFIG)
    real = tmp_path / "real-haproxy"
    real.write_text('#!/bin/sh\necho "pid=$$ args=$*"\n')
    real.chmod(0o700)
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(haproxy_wrapper_text(str(real), 8404, 9101))
    wrapper.chmod(0o700)
    proc = subprocess.Popen(
        [str(wrapper), "-db", "-f", str(config), "-sf", "123"], stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    # exec: the PID Ray holds is HAProxy's own, and it gets the same arguments
    assert out.strip() == f"pid={proc.pid} args=-db -f {config} -sf 123"
    text = config.read_text()
    assert "  bind 127.0.0.1:8404\n" in text and "    bind 127.0.0.1:9101\n" in text
    assert "    bind *:8000\n" in text  # the API frontend keeps what http_options.host says
    assert text.replace("127.0.0.1:8404", "*:8404").replace("127.0.0.1:9101", ":9101") == (
        RAY_HAPROXY_CONFIG
    )


def test_haproxy_files_go_to_a_private_folder_and_set_variables_stay(tmp_path, request):
    directory = private_dir(tmp_path / "h")
    if len(str((tmp_path / "h").resolve())) > 27:  # too deep for HAProxy's socket paths
        assert directory.parent == Path(tempfile.gettempdir())
        assert len(str(directory)) <= 27
        request.addfinalizer(lambda: shutil.rmtree(directory, ignore_errors=True))
        assert private_dir(tmp_path / "h") == directory  # the next start reuses it
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    env = haproxy_env(directory, {"RAY_SERVE_HAPROXY_SOCKET_PATH": "/mine/admin.sock"})
    assert "RAY_SERVE_HAPROXY_SOCKET_PATH" not in env
    assert env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] == str(directory / "haproxy.cfg")
    assert env["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"].startswith(str(directory))
    wrapper = Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"])
    assert wrapper.parent == directory and os.access(wrapper, os.X_OK)


def test_the_ray_token_is_created_private_and_an_existing_one_made_private(tmp_path):
    home = tmp_path / "home"
    said = secure_ray_token({}, home)
    token = home / ".ray" / "auth_token"
    assert "created" in said
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len(token.read_text()) == 64
    before = token.read_text()
    token.chmod(0o644)
    secure_ray_token({}, home)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == before
    assert "RAY_AUTH_TOKEN" in secure_ray_token({"RAY_AUTH_TOKEN": "x"}, tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_stack_children_inherit_no_secret_variables(monkeypatch):
    monkeypatch.setenv("RECSERVE_DINGTALK_SECRET", "s")
    monkeypatch.setenv("RECSERVE_DINGTALK_WEBHOOK", "https://x/?access_token=t")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t")
    monkeypatch.setenv("SMTP_PASSWORD", "p")
    monkeypatch.setenv("RECSERVE_TEST_HARMLESS", "1")
    scrubbed = inherited_environment(scrub_secrets=True)
    for name in ("RECSERVE_DINGTALK_SECRET", "RECSERVE_DINGTALK_WEBHOOK", "RAY_AUTH_TOKEN"):
        assert name not in scrubbed
    assert "SMTP_PASSWORD" not in scrubbed and scrubbed["RECSERVE_TEST_HARMLESS"] == "1"
    assert inherited_environment(scrub_secrets=False)["RAY_AUTH_TOKEN"] == "t"


def test_prometheus_runs_without_its_lifecycle_api(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSERVE_PROMETHEUS_BIN", sys.executable)
    monkeypatch.setenv("RECSERVE_ALERTMANAGER_BIN", sys.executable)
    cfg = StackConfig(state_dir=tmp_path / "s", receivers=ReceiverSettings())
    specs = {s.name: s for s in process_specs(cfg, render_state(cfg))}
    assert not any("lifecycle" in arg for arg in specs["prometheus"].argv)
    assert "--cluster.listen-address=" in specs["alertmanager"].argv
    for spec in specs.values():
        listen = [a for a in spec.argv if a.startswith("--web.listen-address=")]
        assert listen and listen[0].split("=", 1)[1].startswith("127.0.0.1:")


class _Metrics(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_reload_state_reads_the_reload_metrics():
    _Metrics.body = (
        b"# HELP x\nprometheus_config_last_reload_successful 1\n"
        b"prometheus_config_last_reload_success_timestamp_seconds 1.7e+09\n"
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert reload_state("prometheus", url) == (1.0, 1.7e9)
        assert reload_state("alertmanager", url) is None
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_the_dingtalk_bridge_takes_json_bodies_only(content_type):
    sent = []
    bridge = DingTalkBridge("https://robot.example/send", send=lambda u, m: sent.append(m))
    server = serve(bridge, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.server_address[1]}/alert",
            data=json.dumps({"alerts": []}).encode(),
            headers={"Content-Type": content_type},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 415
        assert json.loads(refused.value.read())["error"]["code"] == "unsupported_media_type"
        assert sent == []
    finally:
        server.shutdown()
        server.server_close()


def test_receiver_validation_errors_never_repeat_secrets(tmp_path):
    from serve_app.monitoring.alerting.alertmanager_config import load_receiver_settings

    receivers = tmp_path / "receivers.yaml"
    receivers.write_text(
        "dingtalk:\n  url: ftp://robot.example/send?access_token=SECRET-A\n"
        "  secret: [SECRET-B]\n"
        "email:\n  password: {p: SECRET-C}\n"
    )
    with pytest.raises(ValueError) as refused:
        load_receiver_settings(receivers, environ={})
    message = str(refused.value)
    assert "dingtalk.url" in message and "email.password" in message  # what to fix is named
    assert "SECRET" not in message


def test_a_ray_started_here_is_kept_on_loopback_unless_one_is_joined():
    assert loopback_ray_env({}, None) == LOCAL_RAY_LOOPBACK
    # Joining a Ray the user points at, or the one `ray start` left running here: its node
    # address must stay the one the cluster knows.
    assert loopback_ray_env({"RAY_ADDRESS": "10.0.0.5:6379"}, None) == {}
    assert loopback_ray_env({}, "192.0.2.2:6379") == {}
    # The user's own setting wins.
    (name,) = LOCAL_RAY_LOOPBACK
    assert loopback_ray_env({name: "1"}, None) == {}
