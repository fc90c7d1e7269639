"""Alerting: Prometheus rules and config, Alertmanager config, the DingTalk bridge."""
