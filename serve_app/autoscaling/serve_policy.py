"""The module the YAML's `policy_function` names:
`serve_app.autoscaling.serve_policy:ForecastPolicy`.

Serve cloudpickles the module named in `policy_function` BY VALUE (its code travels inside the
pickle, and so does every submodule of it), and the pydantic models of the rules do not survive
by-value pickling. So the path names this leaf, which holds no code of its own: the class it
imports is defined in `serve_app.autoscaling.ray_policy`, which is neither this module nor one of
its submodules, so cloudpickle stores the class by reference and the controller imports it from the
installed package like any other. `deployment_policy.POLICY_FUNCTION` holds this path.
"""

from serve_app.autoscaling.ray_policy import ForecastPolicy

__all__ = ["ForecastPolicy"]
