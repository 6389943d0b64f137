"""deploy/: what issue 8 asks of each way to run offboard, checked without a cluster,
a Docker engine or systemd.

- deploy/k8s validates against Kubernetes' own JSON schemas (bundled with
  kubernetes-validate, so offline) in strict mode, and keeps the invariants: two
  replicas, probes, limits, a locked-down security context, secrets only from a Secret,
  selectors that match, a ConfigMap whose offboard config the config model accepts.
- deploy/Dockerfile is read instruction by instruction (dockerfile-parse).
- deploy/systemd/offboard.service is parsed, and its config example validates.
- deploy/prometheus/alerts.yaml has the rule structure and uses only exported metrics.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import inspect
import io
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from pydantic import BaseModel

from tests.conftest import REPO
from worker.cli import EXIT_BAD_INPUT, _parser
from worker.config import Config, SecretRef, parse_config
from worker.worker import Worker

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
#: a recent Kubernetes whose schemas kubernetes-validate ships (it never downloads them)
K8S_VERSION = "1.32"
#: the metrics offboard exports (another test checks the app exports exactly these)
METRICS = {
    "offboard_cases",
    "offboard_step_duration_seconds",
    "offboard_provider_calls_total",
    "offboard_provider_errors_total",
    "offboard_provider_throttles_total",
    "offboard_countdowns_open",
    "offboard_next_lapse_seconds",
    "offboard_operator_tasks_waiting",
    "offboard_operator_task_oldest_age_seconds",
    "offboard_drift_detected_total",
}
HISTOGRAMS = {"offboard_step_duration_seconds"}
#: names that must never be set in plain text (ENV, env:, the ConfigMap)
#: in a pod or a container, offboard must listen beyond loopback
ANY_ADDRESS = "0.0.0.0"  # noqa: S104  (what the configs must say, not a bind)
SECRETISH = re.compile(r"TOKEN|SECRET|PASSW|PRIVATE|API_?KEY|ACCESS_KEY|DSN|DATABASE_URL", re.I)


# --- helpers -------------------------------------------------------------------------


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _one(kind: str) -> dict[str, Any]:
    found = [d for p in _manifests() for d in _docs(p) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _one("Deployment")["spec"]["template"]["spec"]
    return spec


def _containers() -> list[dict[str, Any]]:
    spec = _pod_spec()
    containers: list[dict[str, Any]] = spec["containers"] + spec.get("initContainers", [])
    return containers


def _configmap_config() -> Config:
    text = _one("ConfigMap")["data"]["offboard.yaml"]
    return parse_config(yaml.safe_load(text), "deploy/k8s/configmap.yaml offboard.yaml")


def _secret_refs(model: BaseModel, path: str = "") -> list[tuple[str, SecretRef]]:
    """Every SecretRef in a parsed configuration, with its dotted path."""
    found: list[tuple[str, SecretRef]] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, SecretRef):
            found.append((where, value))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name), f"{where}.{name}" if where else name)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}")
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")

    walk(model, path)
    return found


def _drain_seconds() -> float:
    """The longest a SIGTERM'd `offboard serve` may take: the HTTP server's handler wait,
    the worker's grace for the step in flight, then the notifier deliveries. Read from
    the code, so a longer drain there fails this test until the deployments follow."""
    cli = (REPO / "worker" / "cli.py").read_text(encoding="utf-8")
    runtime = (REPO / "worker" / "runtime.py").read_text(encoding="utf-8")
    http = re.search(r"AppRunner\(.*shutdown_timeout=([\d.]+)", cli)
    notify = re.search(r"push_async_callback\(fanout\.aclose, ([\d.]+)\)", runtime)
    assert http and notify, "the drain timeouts moved: update _drain_seconds"
    grace = inspect.signature(Worker.__init__).parameters["grace_seconds"].default
    return float(http.group(1)) + float(grace) + float(notify.group(1))


# --- Kubernetes: schemas ---------------------------------------------------------------


def test_the_kubernetes_schemas_are_bundled() -> None:
    versions = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    assert K8S_VERSION in versions


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path.name} holds no manifest"
    for doc in docs:
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


@pytest.mark.parametrize(
    ("where", "field"),
    [
        (
            ("spec", "template", "spec", "containers", 0, "securityContext"),
            "readOnlyRootFileSystem",
        ),
        (("spec",), "replica"),
        (("spec", "template", "spec", "containers", 0, "livenessProbe", "httpGet"), "paht"),
    ],
)
def test_a_misspelled_field_fails_validation(where: tuple[str | int, ...], field: str) -> None:
    doc = copy.deepcopy(_one("Deployment"))
    node: Any = doc
    for key in where:
        node = node[key]
    node[field] = node.get(field, True)
    with pytest.raises(kubernetes_validate.ValidationError, match=field):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_applies_everything_but_the_secret_example() -> None:
    kustomization = _docs(K8S / "kustomization.yaml")[0]
    resources = set(kustomization["resources"])
    assert resources == {p.name for p in _manifests()} - {"secret.example.yaml"}
    assert _one("Secret")["metadata"]["name"]  # documented, but never applied from here


# --- Kubernetes: invariants ----------------------------------------------------------


def test_every_manifest_is_in_the_offboard_namespace() -> None:
    for path in _manifests():
        for doc in _docs(path):
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == "offboard", path.name


def test_deployment_runs_two_replicas_with_probes() -> None:
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    (container,) = _pod_spec()["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == _configmap_config().server.port
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("http", ports["http"]), probe


def test_deployment_serves_the_mounted_config() -> None:
    (container,) = _pod_spec()["containers"]
    args = _parser().parse_args(container["args"])
    assert args.command == "serve"
    config_path = Path(args.config)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod_spec()["volumes"]}
    (name,) = [n for n, m in mounts.items() if Path(m["mountPath"]) == config_path.parent]
    source = volumes[name]["configMap"]
    assert source["name"] == _one("ConfigMap")["metadata"]["name"]
    assert {"key": "offboard.yaml", "path": config_path.name} in source["items"]


def test_every_container_is_limited_and_locked_down() -> None:
    pod = _pod_spec()
    pod_security = pod.get("securityContext", {})
    assert pod["containers"]
    for container in _containers():
        name = container["name"]
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["limits"]), name
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert not security.get("capabilities", {}).get("add"), name
        assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, name
        seccomp = security.get("seccompProfile", pod_security.get("seccompProfile"))
        assert seccomp == {"type": "RuntimeDefault"}, name
        uid = security.get("runAsUser", pod_security.get("runAsUser"))
        assert isinstance(uid, int) and uid > 0, name
        assert uid == _dockerfile_uid(), "runAsUser differs from the image's USER"


def test_termination_grace_covers_the_drain() -> None:
    pod = _pod_spec()
    (container,) = pod["containers"]
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
    pre_stop_seconds = float(pre_stop["command"][-1]) if pre_stop else 0.0
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_seconds + _drain_seconds()


def test_tmp_is_a_writable_empty_dir() -> None:
    (container,) = _pod_spec()["containers"]
    volumes = {v["name"]: v for v in _pod_spec()["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]  # noqa: S108 (a mount)
    assert "emptyDir" in volumes[tmp["name"]]
    assert not tmp.get("readOnly", False)


def test_pdb_and_service_select_the_deployments_pods() -> None:
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert set(pdb["spec"]["selector"]) == {"matchLabels"}
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = _one("Service")
    assert service["spec"]["selector"]
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = _pod_spec()["containers"]
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names


def test_a_config_change_rolls_the_pods() -> None:
    """The pod template carries the configuration's checksum: a changed ConfigMap changes
    the template, and Kubernetes replaces the pods (offboard reads its config at start)."""
    text = _one("ConfigMap")["data"]["offboard.yaml"]
    expected = hashlib.sha256(text.encode()).hexdigest()
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] == expected, (
        f"deploy/k8s/deployment.yaml: set checksum/config to {expected}"
    )


def test_network_policy_lets_in_http_and_out_only_dns_https_postgres_and_credentials() -> None:
    policy = _one("NetworkPolicy")["spec"]
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    egress = {
        (port["port"], port["protocol"]): rule["to"]
        for rule in policy["egress"]
        for port in rule["ports"]
    }
    assert set(egress) == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (5432, "TCP"), (80, "TCP")}
    (https,) = egress[(443, "TCP")]
    # the providers are public: HTTPS to a private or link-local address is not allowed
    assert https["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(
        https["ipBlock"]["except"]
    )
    # port 80 only to the EKS Pod Identity agent, which hands out the AWS credentials
    assert egress[(80, "TCP")] == [{"ipBlock": {"cidr": "169.254.170.23/32"}}]
    # the database port the ConfigMap's DSN is read for (store.postgres)
    assert _configmap_config().store.postgres is not None


# --- Kubernetes: prometheus-operator objects (CRDs) ----------------------------------

MONITORING = K8S / "monitoring"
#: ServiceMonitor and PrometheusRule are CRDs, which kubernetes-validate does not know:
#: they are checked against this schema (its $comment says where it comes from)
OPERATOR_SCHEMA = REPO / "tests" / "data" / "prometheus-operator-v1.schema.json"


def _operator_objects() -> dict[str, dict[str, Any]]:
    docs = [d for p in sorted(MONITORING.glob("*.yaml")) for d in _docs(p)]
    return {d["kind"]: d for d in docs if d["kind"] != "Kustomization"}


def _operator_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(OPERATOR_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_monitoring_objects_validate_against_the_operators_schema() -> None:
    objects = _operator_objects()
    assert set(objects) == {"ServiceMonitor", "PrometheusRule"}
    validator = _operator_validator()
    for kind, doc in objects.items():
        errors = [e.message for e in validator.iter_errors(doc)]
        assert errors == [], kind
        assert doc["metadata"]["namespace"] == "offboard"
    kustomization = _docs(MONITORING / "kustomization.yaml")[0]
    assert set(kustomization["resources"]) == {
        p.name for p in MONITORING.glob("*.yaml") if p.name != "kustomization.yaml"
    }


@pytest.mark.parametrize(
    ("kind", "where", "field"),
    [
        ("ServiceMonitor", ("spec", "endpoints", 0), "intervall"),
        ("ServiceMonitor", ("spec",), "selectr"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0), "fore"),
    ],
)
def test_a_misspelled_monitoring_field_fails(
    kind: str, where: tuple[str | int, ...], field: str
) -> None:
    doc = copy.deepcopy(_operator_objects()[kind])
    node: Any = doc
    for key in where:
        node = node[key]
    node[field] = "30s"
    assert not _operator_validator().is_valid(doc)
    bad = copy.deepcopy(_operator_objects()[kind])
    if kind == "ServiceMonitor":
        bad["spec"]["endpoints"][0]["interval"] = "half a minute"
        assert not _operator_validator().is_valid(bad)


def test_service_monitor_scrapes_the_services_metrics_port() -> None:
    monitor = _operator_objects()["ServiceMonitor"]["spec"]
    service = _one("Service")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # the job label is the Service's name: what WorkerDown's up{job="offboard"} expects
    assert "jobLabel" not in monitor and service["metadata"]["name"] == "offboard"


def test_prometheus_rule_holds_the_alert_rules_word_for_word() -> None:
    rule = _operator_objects()["PrometheusRule"]
    assert rule["spec"] == _docs(DEPLOY / "prometheus" / "alerts.yaml")[0]


def test_configmap_config_validates_and_uses_postgres() -> None:
    config = _configmap_config()
    assert config.store.postgres is not None
    assert config.server.host == ANY_ADDRESS
    assert config.playbook_dirs == [_dockerfile_copies()["playbooks"]]


def test_secrets_come_only_from_the_secret() -> None:
    secret = _one("Secret")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    # the example commits no value: each is empty, to be filled outside the repository
    assert all(v == "" for v in {**secret.get("data", {}), **secret.get("stringData", {})}.values())
    (container,) = _pod_spec()["containers"]
    volumes = {v["name"]: v for v in _pod_spec()["volumes"]}
    secret_mounts = [
        Path(m["mountPath"])
        for m in container["volumeMounts"]
        if volumes[m["name"]].get("secret", {}).get("secretName") == secret["metadata"]["name"]
    ]
    assert len(secret_mounts) == 1
    refs = _secret_refs(_configmap_config())
    assert refs, "the ConfigMap's config refers to no secret"
    used = set()
    for where, ref in refs:
        assert ref.file is not None, f"{where}: a secret in the pod comes from the Secret's files"
        assert Path(ref.file).parent == secret_mounts[0], where
        assert Path(ref.file).name in keys, f"{where}: no key {Path(ref.file).name} in the Secret"
        used.add(Path(ref.file).name)
    assert used == keys, "the Secret documents keys the config never reads"


def test_no_literal_secret_in_configmap_or_deployment() -> None:
    text = _one("ConfigMap")["data"]["offboard.yaml"]
    assert not re.search(r"://[^/\s:@]+:[^@\s]+@", text), "credentials in a URL"
    assert not re.search(r"\b(ssws|whsec_|xox[bp]-|AKIA)[A-Za-z0-9]", text, re.I)
    for container in _containers():
        for env in container.get("env", []):
            if SECRETISH.search(env["name"]):
                assert "secretKeyRef" in env.get("valueFrom", {}), env["name"]
                assert "value" not in env, env["name"]


# --- Docker --------------------------------------------------------------------------


def _dockerfile() -> list[dict[str, Any]]:
    data = (DEPLOY / "Dockerfile").read_bytes()
    structure: list[dict[str, Any]] = DockerfileParser(fileobj=io.BytesIO(data)).structure
    return [i for i in structure if i["instruction"] != "COMMENT"]


def _stages() -> list[list[dict[str, Any]]]:
    stages: list[list[dict[str, Any]]] = []
    for instruction in _dockerfile():
        if instruction["instruction"] == "FROM":
            stages.append([])
        assert stages, "an instruction before the first FROM"
        stages[-1].append(instruction)
    return stages


def _final(instruction: str) -> list[str]:
    return [i["value"] for i in _stages()[-1] if i["instruction"] == instruction]


def _dockerfile_uid() -> int:
    (user,) = _final("USER")
    return int(user.split(":")[0])


def _copy_args(value: str) -> tuple[list[str], list[str]]:
    words = shlex.split(value)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths


def _dockerfile_copies() -> dict[str, str]:
    """Build-context COPY sources of the final stage, to their destinations."""
    copies = {}
    for value in _final("COPY"):
        flags, paths = _copy_args(value)
        if not any(f.startswith("--from") for f in flags):
            *sources, dest = paths
            copies.update(dict.fromkeys(sources, dest))
    return copies


def test_dockerfile_is_multi_stage_from_a_pinned_slim_python() -> None:
    stages = _stages()
    assert len(stages) >= 2
    for stage in stages:
        image = stage[0]["value"].split()[0]
        name, _, tag = image.partition(":")
        assert name == "python", image
        match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)-slim(-\w+)?(@sha256:[0-9a-f]{64})?", tag)
        assert match, f"{image}: pin a full version tag of a slim image, not latest"
        assert (int(match[1]), int(match[2])) >= (3, 11), image
    build_stage = stages[0][0]["value"].split()[-1]
    from_build = [v for v in _final("COPY") if f"--from={build_stage}" in v]
    assert from_build == [f"--from={build_stage} /opt/offboard /opt/offboard"]


def test_final_stage_has_no_build_tools() -> None:
    final = " ".join(_final("RUN")).lower()
    for tool in ("gcc", "build-essential", "apt-get install", "pip wheel", "pip install"):
        assert tool not in final, tool
    build = " ".join(i["value"] for i in _stages()[0] if i["instruction"] == "RUN")
    assert "pip wheel" in build and "venv" in build


def test_dockerfile_runs_as_a_fixed_non_root_user_before_entrypoint() -> None:
    final = [i["instruction"] for i in _stages()[-1]]
    assert final.count("USER") == 1
    assert final.index("USER") < final.index("ENTRYPOINT")
    assert final.index("USER") < final.index("CMD")
    (user,) = _final("USER")
    assert re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user), "a numeric, non-root UID[:GID]"
    assert _dockerfile_uid() >= 1000
    (run,) = [v for v in _final("RUN") if "useradd" in v]
    assert f"--uid {_dockerfile_uid()}" in run


def test_dockerfile_entrypoint_cmd_and_healthcheck() -> None:
    (entrypoint,) = _final("ENTRYPOINT")
    assert json.loads(entrypoint) == ["offboard"]
    (cmd,) = _final("CMD")
    args = _parser().parse_args(json.loads(cmd))
    assert args.command == "serve"
    assert args.config == "/etc/offboard/offboard.yaml"
    (expose,) = _final("EXPOSE")
    (healthcheck,) = _final("HEALTHCHECK")
    assert f"http://127.0.0.1:{expose}/healthz" in healthcheck
    probe = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert probe[:2] == ["python", "-c"] and "urllib.request" in probe[2]
    compile(probe[2], "HEALTHCHECK", "exec")


def test_dockerfile_adds_no_url_and_sets_no_secret() -> None:
    instructions = _dockerfile()
    for i in instructions:
        if i["instruction"] == "ADD":
            assert not re.search(r"\b(https?|git)://|git@", i["value"]), i["value"]
    for i in instructions:
        if i["instruction"] in ("ENV", "ARG"):
            for word in shlex.split(i["value"]):
                assert not SECRETISH.search(word.partition("=")[0]), word


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or a parent decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
            ignored = not negate
    return ignored


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        source
        for stage in _stages()
        for i in stage
        if i["instruction"] in ("COPY", "ADD")
        for flags, paths in [_copy_args(i["value"])]
        if not any(f.startswith("--from") for f in flags)
        for source in paths[:-1]
    ]
    assert "playbooks" in sources and "worker" in sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not _dockerignored(source, patterns), f"{source} is left out by .dockerignore"
    for private in (".venv", ".git", "var/offboard.db", "var/sandbox.env", "tests"):
        assert _dockerignored(private, patterns), f"{private} would be sent to the build"


def test_the_build_stage_copies_everything_the_wheel_is_built_from() -> None:
    """pyproject.toml's readme, license files and mapped package directories (the
    playbooks and the starter configuration ship in the wheel) must be in the build
    stage, or `pip wheel .` fails there."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {
        project["project"]["readme"],
        *project["project"]["license-files"],
        *project["tool"]["setuptools"]["package-dir"].values(),
        "worker",
        "pyproject.toml",
    }
    copied: set[str] = set()
    for i in _stages()[0]:
        if i["instruction"] == "COPY":
            _, paths = _copy_args(i["value"])
            copied.update(p.rstrip("/") for p in paths[:-1])
    for path in needed:
        # a directory may be copied whole or file by file
        assert path in copied or any(c.startswith(f"{path}/") for c in copied), path
    data = project["tool"]["setuptools"]["package-data"]
    for package, directory in project["tool"]["setuptools"]["package-dir"].items():
        for pattern in data[package]:
            for file in (REPO / directory).glob(pattern):
                relative = str(file.relative_to(REPO))
                assert relative in copied or directory in copied, relative


def test_docker_config_example_matches_the_image() -> None:
    config = parse_config(
        yaml.safe_load((DEPLOY / "docker" / "offboard.yaml").read_text(encoding="utf-8")),
        "deploy/docker/offboard.yaml",
    )
    assert config.store.postgres is None
    data_dir = Path(config.store.sqlite).parent
    (run,) = [v for v in _final("RUN") if "useradd" in v]
    assert f"-o offboard -g offboard -m 0750 {data_dir}" in run, "the data dir is not writable"
    assert config.playbook_dirs == [_dockerfile_copies()["playbooks"]]
    assert config.server.host == ANY_ADDRESS
    assert str(config.server.port) in _final("EXPOSE")
    for where, ref in _secret_refs(config):
        assert ref.file is not None and ref.file.startswith("/run/secrets/"), where


# --- systemd -------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file: sections of (key, value), repeated keys kept in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}:{number}: continuation lines unsupported"
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None and re.fullmatch(r"[A-Za-z]+", key.strip()), (
            f"{path.name}:{number}: not a key=value line: {raw!r}"
        )
        sections[current].append((key.strip(), value.strip()))
    return sections


SERVICE = DEPLOY / "systemd" / "offboard.service"


def _service() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for key, value in _unit(SERVICE)["Service"]:
        values.setdefault(key, []).append(value)
    return values


def _systemd_config() -> Config:
    path = DEPLOY / "systemd" / "offboard.yaml"
    return parse_config(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))


def test_systemd_unit_parses_and_is_hardened() -> None:
    unit = _unit(SERVICE)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = _service()
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "StateDirectory": "offboard",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert any(v.startswith("@system-service") for v in service["SystemCallFilter"])
    assert "AF_PACKET" not in service["RestrictAddressFamilies"][0]
    assert str(EXIT_BAD_INPUT) in service["RestartPreventExitStatus"][0].split()
    assert ("WantedBy", "multi-user.target") in unit["Install"]


def test_systemd_documentation_names_files_the_install_steps_put_there() -> None:
    (documentation,) = [v for k, v in _unit(SERVICE)["Unit"] if k == "Documentation"]
    steps = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for uri in documentation.split():
        scheme, _, path = uri.partition(":")
        assert scheme == "file", uri
        assert re.search(rf"install -D -m 0644 \S+ {re.escape(path)}\n", steps), uri


def test_systemd_unit_runs_as_an_unprivileged_user() -> None:
    service = _service()
    if service.get("DynamicUser") == ["yes"]:
        return
    (user,) = service["User"]
    assert user not in ("root", "0")
    sysusers = (DEPLOY / "systemd" / "offboard.sysusers.conf").read_text(encoding="utf-8")
    assert re.search(rf"^u\s+{re.escape(user)}\s", sysusers, re.M), "sysusers.d creates no user"


def test_systemd_stop_timeout_covers_the_drain() -> None:
    service = _service()
    (timeout,) = service["TimeoutStopSec"]
    assert float(timeout.removesuffix("s")) >= _drain_seconds()
    assert service["KillMode"] == ["mixed"]


def test_systemd_serves_its_config_example() -> None:
    (exec_start,) = _service()["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].startswith("/") and argv[0].endswith("/offboard")
    args = _parser().parse_args(argv[1:])
    assert args.command == "serve"
    assert args.config == "/etc/offboard/offboard.yaml"


def test_systemd_config_keeps_sqlite_in_the_state_directory() -> None:
    config = _systemd_config()
    assert config.store.postgres is None
    (state,) = _service()["StateDirectory"]
    assert Path(config.store.sqlite).parent == Path("/var/lib") / state
    assert all(Path(d).is_absolute() for d in config.playbook_dirs)


def test_systemd_secrets_are_credentials() -> None:
    credentials = dict(v.split(":", 1) for v in _service()["LoadCredential"])
    directory = Path("/run/credentials") / SERVICE.name
    refs = _secret_refs(_systemd_config())
    assert refs
    for where, ref in refs:
        assert ref.file is not None, f"{where}: use LoadCredential=, not the environment"
        assert Path(ref.file).parent == directory, where
        assert Path(ref.file).name in credentials, f"{where}: no LoadCredential= for it"
    assert {Path(r.file).name for _, r in refs if r.file} == set(credentials)
    for source in credentials.values():
        assert source.startswith("/etc/offboard/credentials/"), source
    env_file = (DEPLOY / "systemd" / "offboard.env").read_text(encoding="utf-8")
    for line in env_file.splitlines():
        if line.strip() and not line.startswith("#"):
            assert not SECRETISH.search(line.partition("=")[0]), line


# --- Prometheus ----------------------------------------------------------------------

ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


def _metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        name, call = match.group(1), match.group(2)
        if not call and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert set(data) == {"groups"}
    rules = []
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["name"]
        assert group["rules"]
        rules.extend(group["rules"])
    return rules


def test_alert_rules_have_the_prometheus_structure() -> None:
    rules = _rules()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"][key].strip(), f"{rule['alert']}: no {key}"
    assert len({r["alert"] for r in rules}) == len(rules)


def test_the_issues_alerts_are_there() -> None:
    rules = {r["alert"]: r for r in _rules()}
    expected = {
        "OperatorTaskWaitingTooLong": ("offboard_operator_task_oldest_age_seconds", "> 900", "5m"),
        "CaseHalted": ("offboard_cases", '{state="halted"}', None),
        "DriftDetected": ("offboard_drift_detected_total", "increase(", None),
        "ProviderThrottling": ("offboard_provider_throttles_total", "sum by (provider)", None),
        "WorkerDown": ("up", '{job="offboard"} == 0', None),
    }
    for alert, (metric, fragment, duration) in expected.items():
        assert alert in rules, alert
        assert metric in _metric_names(rules[alert]["expr"]), alert
        assert fragment in rules[alert]["expr"], alert
        if duration:
            assert rules[alert]["for"] == duration


def test_alerts_use_only_exported_metrics() -> None:
    series = {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}
    allowed = METRICS | series | {"up"}
    used = set()
    for rule in _rules():
        names = _metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= allowed, f"{rule['alert']}: unknown metric {names - allowed}"
        used |= names
    assert "up" in used


def test_metric_name_extraction() -> None:
    expr = 'sum by (provider) (rate(offboard_made_up_total{state="x"}[5m])) > 1'
    assert _metric_names(expr) == {"offboard_made_up_total"}
    assert _metric_names('absent(up{job="offboard"}) or on (job) x_total') == {"up", "x_total"}
    assert _metric_names("max(a) > bool 900") == {"a"}


def test_scrape_configs_name_the_job_the_alerts_expect() -> None:
    for path in sorted((DEPLOY / "prometheus").glob("scrape-*.yaml")):
        data = _docs(path)[0]
        assert [job["job_name"] for job in data["scrape_configs"]] == ["offboard"], path.name
        assert all(job["metrics_path"] == "/metrics" for job in data["scrape_configs"])
