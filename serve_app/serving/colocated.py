"""A model served inside the Ingress's own process, called as its Recognizer deployment would be.

The predict then costs no hop: the Ingress decodes and infers where the request arrived.
"""

from __future__ import annotations

import inspect


class _Method:
    """`handle.method.remote(...)`: an awaitable of the method's result."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args, **kwargs):
        async def call():
            result = self.fn(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return call()


class LocalModel:
    """A Recognizer object in this process, behind the part of the DeploymentHandle interface the
    Ingress uses (`predict`, `info`, `options`, `deployment_name`)."""

    def __init__(self, recognizer):
        self.recognizer = recognizer
        self.deployment_name = f"{recognizer.cfg.name} (in the Ingress)"
        self.predict = _Method(recognizer.predict)
        self.info = _Method(recognizer.info)

    def options(self, **_) -> "LocalModel":
        return self


def with_colocated(recognizers: dict, config) -> dict:
    """The handles by model name, with each model given as None loaded here instead."""
    from serve_app.serving.recognizer import Recognizer

    limits = config.limits.model_dump()
    return {
        name: handle
        if handle is not None
        else LocalModel(Recognizer.func_or_class(config.model(name).model_dump(), limits))
        for name, handle in recognizers.items()
    }
