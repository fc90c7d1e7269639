"""What `make bench` compares with what, kept pure so that the ratios can be checked without a run.

Every ratio names what it compares and holds the rest equal: the same request shape (1-image
requests unless the name says otherwise), the same client count, the same replica count, and the
same warm-up on both sides.
"""

from __future__ import annotations

# (key, numerator load, denominator, what the ratio isolates). A denominator starting with
# "pipeline" is the in-process pipeline at the served variant's thread budget.
RATIOS = (
    (
        "served_1_image_vs_pipeline",
        "ours_1_image_requests",
        "pipeline",
        "serving path: our service over HTTP against the in-process pipeline with the same threads "
        "(1 inference worker of 1 intra-op thread and its decode threads per replica), 1-image "
        "requests",
    ),
    (
        "served_4_image_vs_pipeline",
        "ours_4_image_requests",
        "pipeline",
        "serving path, 4-image requests, against the same pipeline",
    ),
    (
        "runtime_choice",
        "naive_ort_1_image_requests",
        "naive_torch_1_image_requests",
        "runtime choice: the same plain deployment on ONNX Runtime against eager torch",
    ),
    (
        "serving_design",
        "ours_1_image_requests",
        "naive_ort_1_image_requests",
        "serving design: ours against the plain deployment on the same runtime (ONNX Runtime)",
    ),
    (
        "ours_vs_naive_torch",
        "ours_1_image_requests",
        "naive_torch_1_image_requests",
        "both together: ours against the plain deployment on eager torch",
    ),
    (
        "grpc_vs_http",
        "ours_grpc_1_image_requests",
        "ours_1_image_requests",
        "front: OIP over gRPC against REST over HTTP, the same Serve",
    ),
)


def pipeline_budget(replicas: int, decode_threads: int) -> dict:
    """The threads of `replicas` served replicas, as the in-process pipeline runs them: one
    inference worker of one intra-op thread per replica, and each replica's decode threads."""
    if replicas < 1 or decode_threads < 1:
        raise ValueError("a budget needs at least one replica and one decode thread")
    return {
        "inference_workers": replicas,
        "intra_op_threads": 1,
        "decode_threads": replicas * decode_threads,
    }


def pipeline_for(results: dict, replicas: int) -> dict | None:
    """The pipeline measured at the budget of `replicas` replicas, None if the run has none."""
    by_replicas = results.get("pipeline_by_replicas")
    if by_replicas is not None:
        return by_replicas.get(str(replicas))
    # Runs before the per-budget pipeline measured the 1-replica budget only.
    return results.get("pipeline") if replicas == 1 else None


def served_ratios(served: dict, pipeline: dict | None) -> dict:
    """The ratios of one served variant whose two sides the run measured, each with its figures
    and what it compares."""
    out = {}
    for key, top, bottom, compares in RATIOS:
        side = pipeline if bottom == "pipeline" else served.get(bottom)
        if top not in served or not side:
            continue
        num, den = served[top]["images_per_s"], side["images_per_s"]
        if not den:
            continue
        out[key] = {
            "value": round(num / den, 2),
            "numerator": {"load": top, "images_per_s": num},
            "denominator": {"load": bottom, "images_per_s": den},
            "compares": compares,
        }
    return out


def attach_ratios(results: dict) -> dict:
    """Each served variant of `results` with its `ratios`, against the pipeline of its budget."""
    for served in results.get("served", []):
        served["ratios"] = served_ratios(
            served, pipeline_for(results, served["variant"]["replicas"])
        )
    return results


def ratios_markdown(ratios: dict) -> list[str]:
    """The ratios as a Markdown table: value, its two sides, what it compares."""
    if not ratios:
        return []
    lines = [
        "| ratio | value | numerator img/s | denominator img/s | compares |",
        "|---|---|---|---|---|",
    ]
    for key, r in ratios.items():
        lines.append(
            f"| {key} | **{r['value']:.2f}** | {r['numerator']['images_per_s']} "
            f"({r['numerator']['load']}) | {r['denominator']['images_per_s']} "
            f"({r['denominator']['load']}) | {r['compares']} |"
        )
    return lines + [""]
