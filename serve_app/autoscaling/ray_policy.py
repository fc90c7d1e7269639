"""The Ray Serve adapter of the forecast policy: `ForecastPolicy`, built by Serve from
`policy_kwargs`.

Serve instantiates it once per deployment and calls it with an AutoscalingContext every control
period. It turns the context and cached Prometheus queries (PrometheusQueryMixin: fetched in a
background thread, never blocking the controller) into `Signals`, calls the pure
`serve_app.autoscaling.decide.decide`, exports the decision as metrics, logs each change with its
reason, and never raises into the controller. The YAML names it through
`serve_app.autoscaling.serve_policy` (that module says why).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ray.serve.autoscaling_policy import PrometheusQueryMixin

from serve_app.autoscaling.decide import decide
from serve_app.autoscaling.queries import default_queries
from serve_app.autoscaling.rules import QUERY_NAMES, PolicyRules
from serve_app.autoscaling.signals import Decision, Signals

logger = logging.getLogger("ray.serve")

# The policy's own entry in the policy-state dict Ray hands back every period (Ray keeps its own
# keys beside it).
STATE_KEY = "forecast_policy"


class _DecisionMetrics:
    """autoscaler_* metrics, created on first use and only inside a running Ray process."""

    def __init__(self):
        self._made = False
        self.target = self.decisions = self.available = None

    def ensure(self) -> bool:
        if self._made:
            return self.target is not None
        self._made = True
        try:
            import ray
            from ray.util import metrics

            if not ray.is_initialized():
                return False
            self.target = metrics.Gauge(
                "autoscaler_target_replicas",
                "Replica target chosen by the forecast policy.",
                tag_keys=("deployment",),
            )
            self.decisions = metrics.Counter(
                "autoscaler_decision_total",
                "Forecast policy decisions by reason code.",
                tag_keys=("deployment", "reason"),
            )
            self.available = metrics.Gauge(
                "autoscaler_signal_available",
                "1 when the policy could read the signal.",
                tag_keys=("deployment", "signal"),
            )
        except Exception:  # metrics are visibility, never a reason to stop scaling
            logger.warning("autoscaler metrics could not be created", exc_info=True)
            self.target = None
            return False
        return True


class ForecastPolicy(PrometheusQueryMixin):
    """Ray Serve class-based policy, instantiated with `policy_kwargs` (see `PolicyRules`).

    Ray instantiates it once per deployment and calls it with an AutoscalingContext every control
    period.
    """

    def __init__(self, **policy_kwargs: Any):
        self.config_error: str | None = None
        self.rules: PolicyRules | None = None
        self.queries: dict[str, str] = {}
        try:
            self.rules = PolicyRules.from_kwargs(policy_kwargs)
        except ValueError as exc:
            # Raising here would fail inside the controller; hold replicas and say why on every call
            # instead.
            self.config_error = str(exc)
            logger.error(
                "%s; the deployment keeps its current replicas until the config is fixed", exc
            )
        if self.rules is None:
            super().__init__()  # nothing to fetch: invalid rules only ever hold
        else:
            self.queries = default_queries(self.rules)
            address = self.rules.prometheus_address or os.environ.get("RAY_PROMETHEUS_HOST")
            super().__init__(
                prometheus_address=address,
                prometheus_queries=list(self.queries.values()),
                fetch_interval_s=self.rules.fetch_interval_s,
                cache_ttl_s=self.rules.cache_ttl_s,
            )
        self._metrics = _DecisionMetrics()

    def read_prometheus(self) -> dict[str, float] | None:
        """Latest cached value per signal name; None when Prometheus is unset, unreachable or
        stale."""
        metrics = self.prometheus_metrics
        if metrics is None:
            return None
        return {name: metrics[query] for name, query in self.queries.items() if query in metrics}

    def signals_from(self, ctx: Any) -> Signals:
        """Signals from Ray's AutoscalingContext plus the cached Prometheus values."""
        values = self.read_prometheus()
        ongoing = ctx.total_num_requests
        return Signals(
            running_replicas=int(ctx.current_num_replicas),
            target_replicas=int(ctx.target_num_replicas),
            min_replicas=int(ctx.capacity_adjusted_min_replicas),
            max_replicas=int(ctx.capacity_adjusted_max_replicas),
            ongoing_requests=float(ongoing) if ongoing is not None else None,
            prometheus_available=values is not None,
            **{name: (values or {}).get(name) for name in QUERY_NAMES},
        )

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """One control period: (replica target, policy state). Never raises."""
        all_state = dict(ctx.policy_state or {})
        own = dict(all_state.get(STATE_KEY) or {})
        now = ctx.current_time if ctx.current_time is not None else time.time()
        named = self.rules.deployment if self.rules is not None else ""
        deployment = named or getattr(ctx, "deployment_name", "") or ""
        signals = None
        try:
            if self.rules is None:
                decision = Decision(
                    ctx.target_num_replicas,
                    own,
                    f"invalid policy_kwargs, holding: {self.config_error}",
                    "invalid_rules",
                )
            else:
                signals = self.signals_from(ctx)
                decision = decide(signals, own, now, self.rules)
        except Exception as exc:  # the controller must never see a policy exception
            logger.exception("forecast policy failed, holding %s replicas", ctx.target_num_replicas)
            decision = Decision(
                ctx.target_num_replicas,
                own,
                f"policy error ({type(exc).__name__}: {exc}), holding",
                "error_hold",
            )
        self._report(decision, signals, own.get("last_code"), deployment)
        all_state[STATE_KEY] = decision.state
        return decision.replicas, all_state

    def _report(
        self, decision: Decision, signals: Signals | None, last_code: str | None, deployment: str
    ) -> None:
        current = signals.target_replicas if signals is not None else decision.replicas
        if decision.replicas != current:
            logger.info("%s: %s", deployment or "autoscaler", decision.reason)
        elif decision.code != last_code and (
            decision.code.startswith(("fallback_", "error", "invalid", "hold_event_budget"))
            or (last_code or "").startswith(("fallback_", "hold_event_budget"))
        ):
            logger.warning("%s: %s", deployment or "autoscaler", decision.reason)
        try:
            if not self._metrics.ensure():
                return
            tags = {"deployment": deployment}
            self._metrics.target.set(decision.replicas, tags=tags)
            self._metrics.decisions.inc(1, tags={**tags, "reason": decision.code})
            if signals is not None:
                for name in (
                    "qps",
                    "p99_ms",
                    "gpu_utilization",
                    "forecast_qps",
                    "ongoing_requests",
                ):
                    self._metrics.available.set(
                        1 if getattr(signals, name) is not None else 0,
                        tags={**tags, "signal": name},
                    )
        except Exception:
            logger.debug("autoscaler metrics export failed", exc_info=True)
