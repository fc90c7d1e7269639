"""alertmanager.yml from receiver settings given in environment variables or a YAML file.

Routing is by severity (critical / warning / info), each channel says which severities it gets;
a critical alert silences the warning of the same family for the same thing (model, deployment,
GPU). With no channel configured, Alertmanager still starts and shows alerts in its UI.
DingTalk has no native Alertmanager receiver: its alerts go to the bridge in dingtalk.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal, Mapping

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from serve_app.monitoring.alerting.rules import SCOPE_LABELS
from serve_app.monitoring.alerting.thresholds import Duration
from serve_app.monitoring.alerting.yamldoc import dump_yaml
from serve_app.validation import validation_problems

SeverityName = Literal["critical", "warning", "info"]
SEVERITIES: tuple[SeverityName, ...] = ("critical", "warning", "info")
DEFAULT_DINGTALK_PORT = 9095

# Environment variable -> (section, key). Values from the environment override the YAML file.
ENV_VARS: dict[str, tuple[str, str]] = {
    "RECSERVE_ALERT_WEBHOOK_URL": ("webhook", "url"),
    "RECSERVE_DINGTALK_WEBHOOK": ("dingtalk", "url"),
    "RECSERVE_DINGTALK_SECRET": ("dingtalk", "secret"),
    "RECSERVE_DINGTALK_AT_MOBILES": ("dingtalk", "at_mobiles"),
    "RECSERVE_ALERT_EMAIL_TO": ("email", "to"),
    "RECSERVE_SMTP_FROM": ("email", "from"),
    "RECSERVE_SMTP_SMARTHOST": ("email", "smarthost"),
    "RECSERVE_SMTP_USERNAME": ("email", "username"),
    "RECSERVE_SMTP_PASSWORD": ("email", "password"),
    "RECSERVE_SMTP_REQUIRE_TLS": ("email", "require_tls"),
}
RECEIVERS_FILE_ENV = "RECSERVE_ALERT_RECEIVERS_FILE"
# Keys whose values a validation error never repeats (URLs carry access tokens).
SECRET_KEYS = ("url", "secret", "password", "username")
LIST_KEYS = {("dingtalk", "at_mobiles"), ("email", "to")}


class Section(BaseModel):
    """Base: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _http_url(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^\s/]+", value):
        # The value is not quoted: a robot or webhook URL carries its access token.
        raise ValueError("is not an http(s) URL (it must start with http:// or https://)")
    return value


OptionalUrl = Annotated[str | None, AfterValidator(_http_url)]


class WebhookChannel(Section):
    """A generic webhook: Alertmanager POSTs its JSON payload to `url`."""

    url: OptionalUrl = Field(None, description="Receiver URL; empty: no webhook.")
    severities: list[SeverityName] = Field(
        ["critical", "warning"], description="Severities sent here."
    )
    send_resolved: bool = Field(True, description="Also notify when an alert resolves.")


class DingTalkChannel(Section):
    """A DingTalk group robot, reached through the bridge
    (serve_app/monitoring/alerting/dingtalk.py)."""

    url: OptionalUrl = Field(
        None,
        description="Robot webhook, https://oapi.dingtalk.com/robot/send?access_token=...; "
        "empty: no DingTalk.",
    )
    secret: str | None = Field(
        None, description="The robot's signing secret (SEC...), if it has one."
    )
    at_mobiles: list[str] = Field([], description="Mobile numbers to @-mention on critical alerts.")
    severities: list[SeverityName] = Field(
        ["critical", "warning"], description="Severities sent here."
    )
    bridge_port: int = Field(
        DEFAULT_DINGTALK_PORT, ge=1, le=65535, description="Loopback port of the bridge."
    )


class EmailChannel(Section):
    """Email over SMTP."""

    to: list[str] = Field([], description="Recipients; empty: no email.")
    from_: str | None = Field(None, alias="from", description="Sender address.")
    smarthost: str | None = Field(None, description="SMTP server as host:port.")
    username: str | None = Field(None, description="SMTP user, if the server needs a login.")
    password: str | None = Field(None, description="SMTP password; written only to a 0600 file.")
    require_tls: bool = Field(True, description="Refuse to send without STARTTLS.")
    severities: list[SeverityName] = Field(["critical"], description="Severities sent here.")

    @field_validator("smarthost")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[^\s:]+:[0-9]+$", v):
            raise ValueError(f"smarthost {v!r} must be host:port, e.g. smtp.example.com:587")
        return v


class RouteTiming(Section):
    """How Alertmanager batches notifications."""

    group_by: list[str] = Field(
        ["alertname", "model_name", "application", "deployment"],
        description="Labels that make one notification.",
    )
    group_wait: Duration = Field(
        "30s", description="Wait this long to batch the first alerts of a group."
    )
    group_interval: Duration = Field(
        "5m", description="Wait this long before notifying about changes to a group."
    )
    repeat_interval: Duration = Field(
        "4h", description="Repeat a still-firing notification after this long."
    )


class ReceiverSettings(Section):
    """Everything the Alertmanager config is made from."""

    webhook: WebhookChannel = Field(default_factory=WebhookChannel)
    dingtalk: DingTalkChannel = Field(default_factory=DingTalkChannel)
    email: EmailChannel = Field(default_factory=EmailChannel)
    route: RouteTiming = Field(default_factory=RouteTiming)

    def email_enabled(self) -> bool:
        """Email is on once recipients are given; the rest must then be complete."""
        return bool(self.email.to)

    def configured_channels(self) -> list[str]:
        """Names of the channels that will receive alerts."""
        names = []
        if self.webhook.url:
            names.append("webhook")
        if self.dingtalk.url:
            names.append("dingtalk")
        if self.email_enabled():
            names.append("email")
        return names


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def load_receiver_settings(
    path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
) -> ReceiverSettings:
    """Receiver settings from a YAML file (or $RECSERVE_ALERT_RECEIVERS_FILE), overridden by
    RECSERVE_* variables."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(RECEIVERS_FILE_ENV) or None
    doc: dict = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"receivers file {path} not found (from --receivers or ${RECEIVERS_FILE_ENV})"
            ) from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(
                f"{path} must be a mapping with webhook / dingtalk / email / route sections"
            )
        doc = loaded or {}
    for var, (section, key) in ENV_VARS.items():
        value = environ.get(var)
        if value is None or value == "":
            continue
        doc.setdefault(section, {})
        if not isinstance(doc[section], dict):
            raise ValueError(f"section {section!r} of {path} must be a mapping")
        doc[section][key] = _split_list(value) if (section, key) in LIST_KEYS else value
    try:
        settings = ReceiverSettings.model_validate(doc)
    except ValidationError as exc:
        source = f"{path} and RECSERVE_* variables" if path else "RECSERVE_* variables"
        problems = validation_problems(exc, "receivers", SECRET_KEYS)
        raise ValueError(f"alert receivers ({source}): {problems}") from None
    if settings.email_enabled():
        missing = [
            name
            for name, v in (("from", settings.email.from_), ("smarthost", settings.email.smarthost))
            if not v
        ]
        if missing:
            raise ValueError(
                f"email alerts to {settings.email.to} need {missing}: set RECSERVE_SMTP_FROM / "
                "RECSERVE_SMTP_SMARTHOST or the email section of the receivers file"
            )
    return settings


def dingtalk_bridge_url(settings: ReceiverSettings) -> str:
    """Where Alertmanager posts alerts meant for DingTalk."""
    return f"http://127.0.0.1:{settings.dingtalk.bridge_port}/alert"


def _receiver(name: SeverityName, s: ReceiverSettings, password_file: str | None) -> dict:
    receiver: dict = {"name": name}
    webhooks = []
    if s.webhook.url and name in s.webhook.severities:
        webhooks.append({"url": s.webhook.url, "send_resolved": s.webhook.send_resolved})
    if s.dingtalk.url and name in s.dingtalk.severities:
        webhooks.append({"url": dingtalk_bridge_url(s), "send_resolved": True})
    if webhooks:
        receiver["webhook_configs"] = webhooks
    if s.email_enabled() and name in s.email.severities:
        email: dict = {
            "to": ", ".join(s.email.to),
            "from": s.email.from_,
            "smarthost": s.email.smarthost,
            "require_tls": s.email.require_tls,
            "send_resolved": True,
        }
        if s.email.username:
            email["auth_username"] = s.email.username
        if s.email.password:
            if password_file is None:
                raise ValueError(
                    "an SMTP password needs a password file to be written into; pass password_file"
                )
            email["auth_password_file"] = password_file
        receiver["email_configs"] = [email]
    return receiver


def alertmanager_config(s: ReceiverSettings, password_file: str | None = None) -> dict:
    """The alertmanager.yml document."""
    return {
        "route": {
            # Alerts without a severity label are treated as warnings.
            "receiver": "warning",
            "group_by": list(s.route.group_by),
            "group_wait": s.route.group_wait,
            "group_interval": s.route.group_interval,
            "repeat_interval": s.route.repeat_interval,
            "routes": [
                {"matchers": ['severity="critical"'], "receiver": "critical"},
                {"matchers": ['severity="info"'], "receiver": "info"},
            ],
        },
        "inhibit_rules": [
            {
                "source_matchers": ['severity="critical"'],
                "target_matchers": ['severity="warning"'],
                # Labels an alert lacks compare equal (both empty), so e.g. GPU alerts match on node
                # + GPU.
                "equal": list(SCOPE_LABELS),
            }
        ],
        "receivers": [_receiver(name, s, password_file) for name in SEVERITIES],
    }


HEADER = (
    "Generated by `recserve stack` from receiver settings "
    "(RECSERVE_* variables or a receivers YAML file)."
)


def render_alertmanager_config(s: ReceiverSettings, password_file: str | None = None) -> str:
    """alertmanager.yml as text."""
    return dump_yaml(alertmanager_config(s, password_file), HEADER)
