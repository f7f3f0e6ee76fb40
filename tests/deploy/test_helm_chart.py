"""The Helm chart: it lints clean, renders for the default values and for
helm/values-production.yaml, every rendered manifest validates strictly against the
Kubernetes 1.30 schemas, and the rendered objects keep the promises the service relies
on (locked-down pods, gRPC health probes, a grace period longer than the drain, no
password in a ConfigMap, a ServiceMonitor only where its CRD exists).

Offline and fast: the Helm SDK (helm-python-sdk, Helm's Go library behind ctypes)
renders without a cluster, and kubernetes-validate ships the schemas.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from helm_python import _native

from service.settings import SPECS, resolve

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "coldstart"
PRODUCTION = ROOT / "helm" / "values-production.yaml"
KUBERNETES = "1.30.0"
RELEASE = "coldstart"
SERVICE_MONITOR = "monitoring.coreos.com/v1/ServiceMonitor"
# Custom resources: kubernetes-validate has schemas for built-in kinds only.
CRD_GROUPS = ("monitoring.coreos.com/",)

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def production() -> dict[str, Any]:
    return helm.values_from_yaml(PRODUCTION.read_text())


def render(
    chart: helm.Chart, values: dict[str, Any] | None = None, *, monitoring: bool = False
) -> list[Manifest]:
    """Every object the chart renders (as `helm template`), NOTES.txt aside.

    `monitoring` adds the ServiceMonitor API to the capabilities, as on a cluster with
    the Prometheus Operator. Chart.render() in helm-python-sdk 0.2.2 does not expose
    `helm template --api-versions/--kube-version`, but the native call it wraps takes
    them (api_versions, kube_version), so the test calls that directly.
    """
    options = {"name": RELEASE, "namespace": "recommender", "kube_version": f"v{KUBERNETES}"}
    if monitoring:
        options["api_versions"] = [SERVICE_MONITOR]
    rendered = json.loads(
        _native.call_string(
            "helm_render",
            chart._raw(),
            None if values is None else json.dumps(values),
            json.dumps(options),
        )
    )
    return [
        document
        for path, text in sorted(rendered.items())
        if path.endswith((".yaml", ".yml"))
        for document in yaml.safe_load_all(text)
        if document
    ]


def only(manifests: list[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    found = [
        m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(name_suffix)
    ]
    assert len(found) == 1, f"expected one {kind}, got {[m['metadata']['name'] for m in found]}"
    return found[0]


def kinds(manifests: list[Manifest]) -> set[str]:
    return {m["kind"] for m in manifests}


def service_container(manifests: list[Manifest]) -> Manifest:
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "coldstart")


# --- lint and schema validation ---------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, PRODUCTION], ids=["default", "production"])
def test_the_chart_lints_clean(values_file: Path | None) -> None:
    values = helm.values_from_yaml(values_file.read_text()) if values_file else None
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings, errors
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("which", ["default", "production"])
def test_every_rendered_manifest_is_valid_kubernetes_1_30(
    chart: helm.Chart, production: dict[str, Any], which: str
) -> None:
    values = production if which == "production" else None
    manifests = render(chart, values, monitoring=which == "production")
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds(manifests)
    if which == "production":
        assert {"HorizontalPodAutoscaler", "Job", "ServiceMonitor"} <= kinds(manifests)
    skipped = []
    for manifest in manifests:
        if manifest["apiVersion"].startswith(CRD_GROUPS):
            # A custom resource (the ServiceMonitor): kubernetes-validate has no schema for
            # it, and `--strict` would only warn "couldn't find schema".
            skipped.append(manifest["kind"])
            continue
        try:
            kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']}: {error.message}")
    assert skipped == (["ServiceMonitor"] if which == "production" else [])


# --- the promises the rendered objects keep ----------------------------------------------


@pytest.mark.parametrize("which", ["default", "production"])
def test_pods_run_non_root_read_only_without_privileges(
    chart: helm.Chart, production: dict[str, Any], which: str
) -> None:
    manifests = render(chart, production if which == "production" else None)
    pods = [m["spec"]["template"]["spec"] for m in manifests if m["kind"] in ("Deployment", "Job")]
    assert pods
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            if container["name"] != "wait-for-model":  # the image writes to /tmp only
                tmp = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"]["name"])
                assert "emptyDir" in tmp


def test_probes_ask_the_grpc_health_service(chart: helm.Chart) -> None:
    container = service_container(render(chart))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 50051}, probe
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc": 50051,
        "metrics": 9464,
    }


def test_with_grpc_tls_the_probes_fall_back_to_tcp(chart: helm.Chart) -> None:
    # The kubelet's gRPC probe cannot speak TLS.
    values = {"grpc": {"tls": {"enabled": True, "secretName": "grpc-cert", "clientCA": True}}}
    manifests = render(chart, values)
    container = service_container(manifests)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in container[probe] and container[probe]["tcpSocket"] == {"port": "grpc"}
    settings = only(manifests, "ConfigMap", RELEASE)["data"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for variable, file in (
        ("COLDSTART_GRPC_TLS_CERT", "tls.crt"),
        ("COLDSTART_GRPC_TLS_KEY", "tls.key"),
        ("COLDSTART_GRPC_TLS_CLIENT_CA", "ca.crt"),
    ):
        assert settings[variable] == f"{mounts['grpc-tls']}/{file}"


@pytest.mark.parametrize("grace", [5, 10, 2.5])
def test_the_termination_grace_period_outlasts_the_drain(chart: helm.Chart, grace: float) -> None:
    manifests = render(chart, {"settings": {"graceSeconds": grace}})
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    assert float(only(manifests, "ConfigMap", RELEASE)["data"]["COLDSTART_GRACE_S"]) == grace
    pre_stop = service_container(manifests)["lifecycle"]["preStop"]["sleep"]["seconds"]
    # The service drains RPCs for up to grace_s, then waits up to grace_s + 10 s for the
    # consumer's last batch; the preStop sleep comes first.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + 2 * grace + 21


def test_the_service_monitor_renders_only_where_its_crd_exists(chart: helm.Chart) -> None:
    assert "ServiceMonitor" not in kinds(render(chart))
    monitor = only(render(chart, monitoring=True), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    disabled = {"metrics": {"serviceMonitor": {"enabled": False}}}
    assert "ServiceMonitor" not in kinds(render(chart, disabled, monitoring=True))


def test_passwords_go_to_the_secret_never_to_the_config_map(chart: helm.Chart) -> None:
    passwords = {"kafka": "kafka-s3cret-pw", "redis": "redis-s3cret-pw"}
    values = {
        "kafka": {
            "securityProtocol": "SASL_SSL",
            "sasl": {
                "mechanism": "SCRAM-SHA-512",
                "username": "svc",
                "password": passwords["kafka"],
            },
        },
        "redis": {"url": "rediss://cache:6380/0", "password": passwords["redis"]},
    }
    manifests = render(chart, values)
    for config_map in (m for m in manifests if m["kind"] == "ConfigMap"):
        text = json.dumps(config_map)
        assert not any(p in text for p in passwords.values()), config_map["metadata"]["name"]
    secret = only(manifests, "Secret")
    stored = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert stored == {
        "kafka-sasl-password": passwords["kafka"],
        "redis-password": passwords["redis"],
    }
    env = {e["name"]: e for e in service_container(manifests)["env"]}
    for variable, key in (
        ("COLDSTART_KAFKA_SASL_PASSWORD", "kafka-sasl-password"),
        ("COLDSTART_REDIS_PASSWORD", "redis-password"),
    ):
        ref = env[variable]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], key)


def test_an_existing_secret_replaces_the_charts(
    chart: helm.Chart, production: dict[str, Any]
) -> None:
    manifests = render(chart, production)
    assert "Secret" not in kinds(manifests)
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in service_container(manifests)["env"]
        if "valueFrom" in e
    }
    assert refs == {production["existingSecret"]}


def test_a_redis_url_with_a_password_is_refused(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError, match="must not carry a password"):
        render(chart, {"redis": {"url": "redis://:hunter2@cache:6379/0"}})


def test_every_setting_variable_is_one_the_service_reads(
    chart: helm.Chart, production: dict[str, Any]
) -> None:
    # A misspelt COLDSTART_* variable would be silently ignored by the service.
    known = {spec.env for spec in SPECS}
    for values in (None, production):
        manifests = render(chart, values)
        container = service_container(manifests)
        names = set(only(manifests, "ConfigMap", RELEASE)["data"]) | {
            e["name"] for e in container["env"]
        }
        unknown = {n for n in names if n.startswith("COLDSTART_")} - known
        assert not unknown, unknown
        assert only(manifests, "ConfigMap", RELEASE)["data"]["COLDSTART_MODEL"] == "/models/current"


@pytest.mark.parametrize("which", ["default", "production"])
def test_the_service_accepts_the_rendered_settings(
    chart: helm.Chart, production: dict[str, Any], which: str, tmp_path: Path
) -> None:
    """The pod's environment passes `coldstart serve`'s start-up validation. Mounted
    files (the model, TLS certificates, CAs) are stood in for under tmp_path, and each
    password the Secret would supply is a placeholder."""
    manifests = render(chart, production if which == "production" else None)
    env = dict(only(manifests, "ConfigMap", RELEASE)["data"])
    env |= {
        e["name"]: "placeholder" for e in service_container(manifests)["env"] if "valueFrom" in e
    }
    for name, value in env.items():
        if value.startswith(("/models/", "/etc/coldstart/")):
            local = tmp_path / value.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            if name == "COLDSTART_MODEL":
                local.mkdir()
                (local / "manifest.json").write_text("{}")
            else:
                local.write_text("PEM")
            env[name] = str(local)
    settings = resolve({}, env)
    assert settings.kafka_bootstrap and settings.redis_url  # never the embedded stack


# --- values the schema or the templates refuse --------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCont": 3},  # top level
        {"kafka": {"bootstarp": "kafka:9092"}},
        {"grpc": {"tls": {"enable": True}}},
        {"settings": {"graceSecond": 5}},
        {"trainer": {"nodeSelecter": {}}},
    ],
    ids=lambda v: json.dumps(v),
)
def test_the_schema_rejects_a_misspelt_key(chart: helm.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError, match="additional properties"):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


@pytest.mark.parametrize(
    "values",
    [
        {"kafka": {"bootstrap": ""}},
        {"kafka": {"bootstrap": None}},
        {"redis": {"url": ""}},
        {"redis": {"url": "http://cache:6379"}},
        {"kafka": {"securityProtocol": "SASL"}},
    ],
    ids=lambda v: json.dumps(v),
)
def test_kafka_and_redis_must_be_given(chart: helm.Chart, values: dict[str, Any]) -> None:
    # Unset, the service would start an embedded broker and Redis inside the pod.
    with pytest.raises(helm.HelmError):
        render(chart, values)


# --- the trainer Job and the model volume ---------------------------------------------------


def test_the_trainer_job_trains_on_a_gpu_into_the_volume_the_service_reads(
    chart: helm.Chart, production: dict[str, Any]
) -> None:
    manifests = render(chart, production)
    pod = only(manifests, "Job")["spec"]["template"]["spec"]
    (trainer,) = pod["containers"]
    assert trainer["image"].endswith("coldstart-trainer:0.1.0")
    args = trainer["args"]
    assert args[0] == "train"
    assert args[args.index("--data") + 1] == "/data"
    assert args[args.index("--out") + 1] == "/models/current"
    assert args[args.index("--device") + 1] == "cuda"
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == production["trainer"]["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    writes = {m["name"]: m for m in trainer["volumeMounts"]}
    assert writes["models"]["mountPath"] == "/models" and not writes["models"].get("readOnly")
    assert writes["data"].get("readOnly") is True
    assert claims["data"] == "coldstart-training-data"

    service_pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    service_claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in service_pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert service_claims["models"] == claims["models"]  # the same volume
    reads = {m["name"]: m for m in service_container(manifests)["volumeMounts"]}
    assert reads["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
    assert "COLDSTART_MODEL_RELOAD_S" in only(manifests, "ConfigMap", RELEASE)["data"]


def test_the_trainer_job_is_off_by_default_and_needs_a_data_claim(chart: helm.Chart) -> None:
    assert "Job" not in kinds(render(chart))
    with pytest.raises(helm.HelmError, match=r"trainer\.data\.existingClaim"):
        render(chart, {"trainer": {"enabled": True}})


def test_the_hpa_owns_the_replica_count_when_enabled(
    chart: helm.Chart, production: dict[str, Any]
) -> None:
    manifests = render(chart, production)
    assert "replicas" not in only(manifests, "Deployment")["spec"]
    hpa = only(manifests, "HorizontalPodAutoscaler")
    assert (
        hpa["spec"]["scaleTargetRef"]["name"] == only(manifests, "Deployment")["metadata"]["name"]
    )
    assert "HorizontalPodAutoscaler" not in kinds(render(chart))


# --- the dashboard -----------------------------------------------------------------------


def test_the_grafana_dashboard_ships_as_a_labelled_config_map(chart: helm.Chart) -> None:
    dashboard = CHART / "dashboards" / "coldstart.json"
    assert dashboard.is_file(), "helm/coldstart/dashboards/coldstart.json is missing"
    config_map = only(render(chart), "ConfigMap", "-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["coldstart.json"]) == json.loads(dashboard.read_text())
    disabled = render(chart, {"dashboard": {"enabled": False}})
    assert not [m for m in disabled if m["metadata"]["name"].endswith("-dashboard")]
