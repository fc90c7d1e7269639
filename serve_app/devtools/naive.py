"""A deliberately plain Ray Serve deployment, the baseline `make bench` measures against.

What a first attempt usually looks like: one FastAPI deployment that decodes, preprocesses and runs
the model per request, with no batching and no separate decode stage. Not for production use.

The runtime is an argument so that the bench can report the baseline twice: eager torch, and ONNX
Runtime on the same cached export the service loads (runtimes.export_onnx). Naive torch against
naive ONNX Runtime is the runtime choice; naive ONNX Runtime against ours is the serving design.
"""

from fastapi import FastAPI, Request
from ray import serve

from serve_app.config import ModelConfig
from serve_app.serving.imaging import decode_and_crop, normalize_batch
from serve_app.serving.models import load_model
from serve_app.serving.recognizer import top_k
from serve_app.serving.runtimes import OnnxRuntime, TorchRuntime, export_onnx

NAIVE_RUNTIMES = ("torch", "onnxruntime")

naive_api = FastAPI(title="naive baseline")


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
@serve.ingress(naive_api)
class NaiveRecognizer:
    """Decode, preprocess and inference, one request at a time."""

    def __init__(self, runtime: str = "torch", num_threads: int = 1):
        self.loaded = load_model(ModelConfig(name="efficientnet_lite0"))
        if runtime == "onnxruntime":
            path = export_onnx(self.loaded, "efficientnet_lite0")
            self.runtime = OnnxRuntime(path, num_threads)
        else:
            self.runtime = TorchRuntime(self.loaded.module, "cpu", "fp32", num_threads)

    @naive_api.post("/predict")
    async def predict(self, request: Request) -> dict:
        """The five most probable classes of the JPEG in the request body."""
        crop = decode_and_crop(await request.body(), self.loaded.preprocess)
        probs = self.runtime.run(normalize_batch([crop], self.loaded.preprocess))[0]
        ids, scores = top_k(probs, 5)
        return {
            "top_k": [
                {"label": self.loaded.labels[i], "class_id": i, "score": s}
                for i, s in zip(ids, scores, strict=True)
            ]
        }


def naive_options(args: dict) -> dict:
    """The deployment options `args` asks for: replicas, and the CPUs each one reserves."""
    runtime = args.get("runtime", "torch")
    if runtime not in NAIVE_RUNTIMES:
        raise ValueError(f"naive runtime must be one of {NAIVE_RUNTIMES}, not {runtime!r}")
    return {
        "name": f"NaiveRecognizer_{runtime}",
        "num_replicas": int(args.get("num_replicas", 1)),
        "ray_actor_options": {"num_cpus": float(args.get("num_cpus", 0.5))},
    }


def build_naive(args: dict):
    """Application builder for the baseline (used by the benchmark's Serve config)."""
    options = naive_options(args)
    return NaiveRecognizer.options(**options).bind(
        args.get("runtime", "torch"), int(args.get("num_threads", 1))
    )
