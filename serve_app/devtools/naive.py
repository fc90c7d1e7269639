"""A deliberately plain Ray Serve deployment, the baseline `make bench` measures against.

What a first attempt usually looks like: one FastAPI deployment that decodes, preprocesses and runs
eager torch per request, with no batching and no separate decode stage. Not for production use.
"""

from fastapi import FastAPI, Request
from ray import serve

from serve_app.config import ModelConfig
from serve_app.serving.imaging import decode_and_crop, normalize_batch
from serve_app.serving.models import load_model
from serve_app.serving.recognizer import top_k
from serve_app.serving.runtimes import TorchRuntime

naive_api = FastAPI(title="naive baseline")


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
@serve.ingress(naive_api)
class NaiveRecognizer:
    """Decode, preprocess and eager torch inference, one request at a time."""

    def __init__(self, num_threads: int = 1):
        self.loaded = load_model(ModelConfig(name="efficientnet_lite0"))
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


def build_naive(args: dict):
    """Application builder for the baseline (used by the benchmark's Serve config)."""
    return NaiveRecognizer.bind(int(args.get("num_threads", 1)))
