"""The PromQL the policy reads, one query per signal, for the model its rules name.

Built from `serve_app.monitoring.promql` and the declared metrics, so a renamed metric or label
changes the policy with everything else; `PolicyRules.queries` overrides any of them.
"""

from __future__ import annotations

from serve_app.autoscaling.forecast_metrics import FORECAST_QPS, FORECASTER_LAST_FIT
from serve_app.autoscaling.rules import PolicyRules
from serve_app.monitoring.metrics import GPU_UTILIZATION
from serve_app.monitoring.promql import exported, latency_quantile, matchers, request_rate


def default_queries(rules: PolicyRules) -> dict[str, str]:
    """PromQL per signal for the rules' model, with the overrides from `rules.queries` applied."""
    model = rules.model_name
    queries = {
        "qps": request_rate(model_name=model),
        "p99_ms": f"1000 * {latency_quantile(0.99, model_name=model)}",
        "gpu_utilization": f"avg({exported(GPU_UTILIZATION)})",
        "forecast_qps": f"max({exported(FORECAST_QPS)}{matchers(model_name=model, bound='upper')})",
        "forecast_fit_time": f"max({exported(FORECASTER_LAST_FIT)}{matchers(model_name=model)})",
    }
    # Only a policy planning on yhat reads it: the others fetch nothing they do not use.
    if rules.predictive.plan_on == "learned":
        yhat = matchers(model_name=model, bound="yhat")
        queries["forecast_yhat_qps"] = f"max({exported(FORECAST_QPS)}{yhat})"
    queries.update(rules.queries)
    return queries
