"""The cluster config and what is rendered from it: the RayService, the volume and the monitoring
ConfigMaps under deploy/, checked offline against Kubernetes' schemas (kubernetes-validate) and
against KubeRay's RayService CRD (a trimmed copy in tests/unit/data, its source named there)."""

from __future__ import annotations

import copy
import re
from pathlib import Path, PurePosixPath

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import deployment_options
from serve_app.autoscaling.forecaster_config import ForecasterConfig
from serve_app.config import AppConfig, load_config, recognizer_deployment_name
from serve_app.devtools import kuberay
from serve_app.paths import CONFIGS_DIR, REPO_ROOT
from serve_app.quality.monitor import QualityMonitor

CLUSTER = CONFIGS_DIR / "serve_config.cluster.yaml"
SINGLE = CONFIGS_DIR / "serve_config.yaml"
CRD_SCHEMA = Path(__file__).parent / "data" / "kuberay_rayservice_v1_schema.yaml"
K8S_VERSION = "1.30.0"

# Where the cluster config may differ from the single-machine one, and nowhere else.
MODEL = "applications.0.args.models.0"
INTENDED = {
    "http_options.host",  # 0.0.0.0: a pod is reached through its Service
    f"{MODEL}.autoscaling_config.min_replicas",
    f"{MODEL}.autoscaling_config.max_replicas",
    f"{MODEL}.autoscaling_config.initial_replicas",
    # a scale-up may wait for a new node: start-up counts the node's start too
    f"{MODEL}.autoscaling_config.policy.policy_kwargs.predictive.startup_s",
    "applications.0.args.ingress.num_replicas",
    "applications.0.args.forecaster.lead_time_s",
    "applications.0.args.forecaster.model_dir",
    "applications.0.args.quality.store_dir",
    # every proxy listens on 0.0.0.0: keys required, from the Secret every pod mounts
    "applications.0.args.auth",
    "applications.0.deployments",
}


def flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = enumerate(value)
    else:
        return {prefix: value}
    out: dict[str, object] = {}
    for key, v in items:
        out.update(flatten(v, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differing(a: dict, b: dict) -> set[str]:
    fa, fb = flatten(a), flatten(b)
    paths = {p for p in fa.keys() | fb.keys() if fa.get(p, object()) != fb.get(p, object())}
    # a whole added section counts once, by the section's path
    return {next((i for i in INTENDED if p.startswith(i + ".")), p) for p in paths}


@pytest.fixture(scope="module")
def cluster_doc() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def cluster_cfg() -> AppConfig:
    return load_config(CLUSTER)


def test_cluster_config_validates_against_serve_and_project_schemas(cluster_doc, cluster_cfg):
    ServeDeploySchema.model_validate(cluster_doc)
    options = deployment_options(cluster_cfg, gpu_available=True)
    assert options["efficientnet_lite0"]["ray_actor_options"]["num_gpus"] == 0.25


def test_cluster_config_differs_from_single_machine_only_where_intended(cluster_doc):
    single = yaml.safe_load(SINGLE.read_text())
    assert differing(single, cluster_doc) == INTENDED
    # and the comparison notices a stray change
    stray = copy.deepcopy(cluster_doc)
    stray["applications"][0]["args"]["limits"]["max_top_k"] = 7
    assert "applications.0.args.limits.max_top_k" in differing(single, stray)


def test_cluster_config_spreads_recognizers_and_pins_state(cluster_doc, cluster_cfg):
    overrides = {d["name"]: d for d in cluster_doc["applications"][0]["deployments"]}
    for m in cluster_cfg.models:
        assert m.autoscaling_config.min_replicas >= 2
        assert overrides[recognizer_deployment_name(m.name)]["max_replicas_per_node"] == 1
    assert cluster_doc["applications"][0]["args"]["ingress"]["num_replicas"] >= 2
    assert overrides["Ingress"]["max_replicas_per_node"] == 1
    assert cluster_doc["proxy_location"] == "EveryNode"
    assert cluster_doc["http_options"]["host"] == "0.0.0.0"
    forecaster = ForecasterConfig.from_dict(cluster_cfg.forecaster)
    code_cpus = {
        "QualityMonitor": QualityMonitor.ray_actor_options["num_cpus"],
        "Forecaster": forecaster.num_cpus,
    }
    for name, cpus in code_cpus.items():
        actor = overrides[name]["ray_actor_options"]
        assert actor["resources"] == {"recserve_state": 0.01}
        assert actor["num_cpus"] == cpus  # the override replaces the code's options whole
    for folder in (cluster_cfg.quality.store_dir, forecaster.model_dir):
        assert folder.startswith(kuberay.STATE_MOUNT + "/")
    # Prometheus comes from the environment of each node, not a fixed address
    policy = cluster_doc["applications"][0]["args"]["models"][0]["autoscaling_config"]["policy"]
    assert policy["policy_kwargs"]["prometheus_address"] is None
    assert forecaster.prometheus_address is None


def test_committed_manifests_are_what_the_renderer_writes():
    for rel, text in kuberay.render().items():
        path = REPO_ROOT / "deploy" / rel
        assert path.read_text() == text, f"{path} is stale: run `make kuberay-manifest`"


@pytest.fixture(scope="module")
def docs() -> dict[str, list[dict]]:
    return {rel: list(yaml.safe_load_all(text)) for rel, text in kuberay.render().items()}


@pytest.fixture(scope="module")
def service(docs) -> dict:
    (rs,) = docs["kuberay/rayservice.yaml"]
    return rs


def pod_templates(service: dict) -> list[dict]:
    cfg = service["spec"]["rayClusterConfig"]
    return [cfg["headGroupSpec"]["template"]] + [g["template"] for g in cfg["workerGroupSpecs"]]


def containers(service: dict) -> list[dict]:
    return [c for t in pod_templates(service) for c in t["spec"]["containers"]]


def test_serve_config_inside_is_the_cluster_config_file(service):
    assert service["spec"]["serveConfigV2"] == CLUSTER.read_text()


def test_rayservice_matches_kuberay_crd(service):
    schema = yaml.safe_load(CRD_SCHEMA.read_text())
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    jsonschema.Draft7Validator(schema).validate(service["spec"])
    cfg = service["spec"]["rayClusterConfig"]
    assert cfg["enableInTreeAutoscaling"] is True
    assert cfg["rayVersion"] == ray.__version__
    # the schema is closed where KubeRay would drop an unknown field without a word
    misspelt = copy.deepcopy(service["spec"])
    misspelt["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(misspelt)


def test_kubernetes_objects_validate_against_their_schemas(docs, service):
    objects = docs["kuberay/storage.yaml"] + docs["kuberay/monitoring.yaml"]
    objects += [
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": t}
        for t in pod_templates(service)
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    broken = copy.deepcopy(objects[-1])
    broken["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_references_are_consistent(docs, service, cluster_doc):
    target = kuberay.Target()
    cfg = service["spec"]["rayClusterConfig"]
    head, groups = cfg["headGroupSpec"], cfg["workerGroupSpecs"]
    # images: ours, built by the Dockerfile from Ray's image of the same version
    assert {c["image"] for c in containers(service)} == {target.image, target.gpu_image}
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-py311" in dockerfile
    # every Ray pod: the token from the one Secret, Prometheus by its DNS name, metrics port
    for c in containers(service):
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": kuberay.TOKEN_SECRET,
            "key": kuberay.TOKEN_KEY,
        }
        assert env["RAY_PROMETHEUS_HOST"]["value"] == target.prometheus_url
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == kuberay.METRICS_PORT
        assert ports["serve"] == cluster_doc["http_options"]["port"]
        if "grpc_options" in cluster_doc:
            assert ports["grpc"] == cluster_doc["grpc_options"]["port"]
    for spec in [head] + groups:
        assert spec["rayStartParams"]["metrics-export-port"] == str(kuberay.METRICS_PORT)
    # the volume: the claim exists, is mounted on the head at the folder the config writes to
    (claim,) = docs["kuberay/storage.yaml"]
    (volume,) = [v for v in head["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    mounts = head["template"]["spec"]["containers"][0]["volumeMounts"]
    (mount,) = [m for m in mounts if m["name"] == volume["name"]]
    assert mount["mountPath"] == kuberay.STATE_MOUNT
    # the head offers what the stateful deployments ask for; no worker does
    offered = yaml.safe_load(yaml.safe_load(head["rayStartParams"]["resources"]))
    assert offered == {"recserve_state": 1}
    assert all("resources" not in g["rayStartParams"] for g in groups)
    # one Recognizer per node: head + CPU workers hold max_replicas
    auto = cluster_doc["applications"][0]["args"]["models"][0]["autoscaling_config"]
    cpu = next(g for g in groups if g["groupName"] == "cpu")
    assert cpu["maxReplicas"] + 1 >= auto["max_replicas"]
    # the GPU example: a whole GPU per pod, the model asks for a fraction
    gpu = next(g for g in groups if g["groupName"] == "gpu")
    (gpu_container,) = gpu["template"]["spec"]["containers"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert 0 < cluster_doc["applications"][0]["args"]["models"][0]["num_gpus"] < 1


def test_every_pod_mounts_the_api_keys_where_the_config_reads_them(service, cluster_cfg):
    keys = PurePosixPath(cluster_cfg.auth.keys_file)
    assert cluster_cfg.auth.require_keys is True
    for t in pod_templates(service):
        volumes = {v["name"]: v for v in t["spec"]["volumes"]}
        (container,) = t["spec"]["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(keys.parent)]
        assert mount["readOnly"] is True and "subPath" not in mount  # updates reach the pod
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == kuberay.KEYS_SECRET
        assert secret["items"] == [{"key": keys.name, "path": keys.name}]
        assert secret.get("optional") is not True  # no Secret, no pod: closed


@pytest.mark.parametrize(
    "auth",
    [None, {"keys_file": "/etc/recserve/keys/keys.json"}, {"require_keys": True}],
    ids=["no-auth", "keys-not-required", "no-keys-file"],
)
def test_a_cluster_config_without_required_keys_is_not_rendered(cluster_doc, tmp_path, auth):
    doc = copy.deepcopy(cluster_doc)
    args = doc["applications"][0]["args"]
    args.pop("auth")
    if auth is not None:
        args["auth"] = auth
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match="auth.require_keys: true"):
        kuberay.render(config_path=path)


def test_monitoring_is_wired_to_the_pods_and_the_project_rules(docs, service):
    target = kuberay.Target()
    maps = {d["metadata"]["name"]: d for d in docs["kuberay/monitoring.yaml"]}
    prom = maps["recserve-prometheus"]["data"]
    config = yaml.safe_load(prom["prometheus.yml"])
    assert config == kuberay.prometheus_config(target) == docs["prometheus/prometheus.yml"][0]
    (job,) = config["scrape_configs"]
    keeps = {
        tuple(r["source_labels"]): r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    label = keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)]
    for t in pod_templates(service):
        assert t["metadata"]["labels"]["app.kubernetes.io/name"] == label
    assert keeps[("__meta_kubernetes_pod_container_port_name",)] == "metrics"
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [target.namespace]
    for rules in ("recording_rules.yml", "alert_rules.yml"):
        assert prom[rules] == (CONFIGS_DIR / "prometheus" / rules).read_text()
        assert any(f.endswith("/" + rules) for f in config["rule_files"])
    (am,) = config["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == [target.alertmanager_address]
    assert (
        maps["recserve-alertmanager"]["data"]["alertmanager.yml"]
        == (CONFIGS_DIR / "alertmanager" / "alertmanager.yml").read_text()
    )
    dashboards = maps["recserve-grafana-dashboards"]
    assert dashboards["metadata"]["labels"] == {"grafana_dashboard": "1"}
    for path in (CONFIGS_DIR / "grafana" / "dashboards").glob("*.json"):
        assert dashboards["data"][path.name] == path.read_text()
    assert re.fullmatch(
        r"http://prometheus\.[a-z-]+\.svc\.cluster\.local:9090", target.prometheus_url
    )
