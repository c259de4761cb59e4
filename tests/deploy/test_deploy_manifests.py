"""deploy/k8s, deploy/docker-compose.yml, deploy/Dockerfile and .dockerignore: every `mtserve serve` setting they
make is one the server has (read by the server's own parser), and the ports, probes, drain times and names
that must agree across files do.

The Kubernetes objects are the rendered overlays (`kubectl kustomize`), validated against Kubernetes' schemas
(kubernetes-validate) and, for the ServiceMonitor, the Prometheus Operator's. No cluster runs here: these
check what a user would apply, not a running cluster (the image runs in test_deploy_image.py).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from _deploy_support import (
    DEPLOY,
    REPO,
    declared_metrics,
    dockerfile_instructions,
    healthcheck_command,
    promql_metric_names,
    promtool_check_expressions,
    require_tool,
    run,
    serve_config,
)

from mtserve.proto.api import SERVICE_NAME
from mtserve.server.config import ServerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

K8S = DEPLOY / "k8s"


OVERLAYS = ("cpu", "gpu")


@functools.cache
def k8s_objects(overlay: str) -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/k8s/overlays/<overlay>`: the objects a user applies."""
    kubectl = require_tool("kubectl", "kubectl")
    rendered = run([kubectl, "kustomize", str(K8S / "overlays" / overlay)])
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def k8s_object(overlay: str, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in k8s_objects(overlay) if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in overlay {overlay}, found {len(found)}"
    return found[0]


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def mtserve_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the mtserve image (built from deploy/Dockerfile)."""
    return {name: service for name, service in compose()["services"].items()
            if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"}


def seconds(duration: str | int) -> float:
    """A compose duration ("30s", "1m30s") in seconds."""
    if isinstance(duration, int):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def test_serve_config_refuses_unknown_settings() -> None:
    """The helper below can fail: an unknown flag, an unknown variable and a bad value are refused."""
    with pytest.raises(pytest.fail.Exception, match="rejected"):
        serve_config(["--max-batch", "8"], {}, "test")
    with pytest.raises(AssertionError, match="MTSERVE_MAX_BATCH"):
        serve_config([], {"MTSERVE_MAX_BATCH": "8"}, "test")
    with pytest.raises(pytest.fail.Exception, match="MTSERVE_THREADS"):
        serve_config([], {"MTSERVE_THREADS": "0"}, "test")
    assert serve_config(["--threads", "2"], {"MTSERVE_PORT": "50052"}, "test").port == 50052


# -- Kubernetes -------------------------------------------------------------------------------------------


def container(overlay: str) -> dict[str, Any]:
    (mtserve,) = k8s_object(overlay, "Deployment", "mtserve")["spec"]["template"]["spec"]["containers"]
    return mtserve


def container_config(overlay: str) -> ServerConfig:
    c = container(overlay)
    env = {}
    for variable in c.get("env", []):
        assert "value" in variable, f"{variable['name']}: literal values only, so that they can be checked"
        env[variable["name"]] = variable["value"]
    return serve_config(c.get("args", []), env, f"deploy/k8s/overlays/{overlay} Deployment")


def test_k8s_objects(overlay: str) -> None:
    api_versions = {"Deployment": "apps/v1", "Service": "v1", "PodDisruptionBudget": "policy/v1",
                    "HorizontalPodAutoscaler": "autoscaling/v2", "NetworkPolicy": "networking.k8s.io/v1",
                    "ServiceMonitor": "monitoring.coreos.com/v1"}
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in k8s_objects(overlay))
    assert kinds == sorted([(kind, "mtserve") for kind in api_versions] + [("Service", "mtserve-headless")])
    for o in k8s_objects(overlay):
        assert o["apiVersion"] == api_versions[o["kind"]]


def test_k8s_settings_are_real_mtserve_settings(overlay: str) -> None:
    config = container_config(overlay)
    # Settings come from the environment, which the image's `mtserve serve` reads.
    assert all(v["name"].startswith("MTSERVE_") for v in container(overlay)["env"])
    assert "command" not in container(overlay), "keep the image's ENTRYPOINT (mtserve serve)"
    # torch threads must not exceed the CPU the pod asks for.
    cpu = container(overlay)["resources"]["requests"]["cpu"]
    cores = float(cpu[:-1]) / 1000 if str(cpu).endswith("m") else float(cpu)
    assert config.threads is not None and config.threads <= max(1, cores), (config.threads, cpu)
    assert container(overlay)["resources"]["limits"].get("memory"), "a memory limit bounds a runaway replica"


def test_k8s_ports_and_probes_match_the_server(overlay: str) -> None:
    config = container_config(overlay)
    c = container(overlay)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = c[probe].get("grpc")
        assert grpc_probe, f"{probe} must be a native gRPC probe (grpc.health.v1.Health)"
        assert grpc_probe["port"] == config.port, probe
        # The services the server reports health for: "" (the server) and the translation service.
        assert grpc_probe.get("service", "") in ("", SERVICE_NAME), probe
    annotations = k8s_object(overlay, "Deployment", "mtserve")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == config.metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_k8s_termination_leaves_time_for_the_drain(overlay: str) -> None:
    config = container_config(overlay)
    pod = k8s_object(overlay, "Deployment", "mtserve")["spec"]["template"]["spec"]
    command = container(overlay)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    pre_stop = float(command[1])
    assert pre_stop > 0
    # Kubernetes counts preStop inside the grace period; then SIGTERM starts the server's drain, which
    # takes up to --grace-seconds; SIGKILL comes at the end of the period.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + config.grace_seconds + 2, (
        pod["terminationGracePeriodSeconds"], pre_stop, config.grace_seconds)


def test_k8s_services_and_budget_select_the_pods(overlay: str) -> None:
    deployment = k8s_object(overlay, "Deployment", "mtserve")
    assert deployment["spec"]["replicas"] == 2
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    port_names = {p["name"] for p in container(overlay)["ports"]}
    headless = k8s_object(overlay, "Service", "mtserve-headless")
    assert headless["spec"]["clusterIP"] == "None"  # DNS returns every pod: client-side round_robin
    regular = k8s_object(overlay, "Service", "mtserve")
    assert regular["spec"].get("clusterIP") != "None"
    for service in (headless, regular):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, port
    assert [p["port"] for p in headless["spec"]["ports"]] == [container_config(overlay).port]
    budget = k8s_object(overlay, "PodDisruptionBudget", "mtserve")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_k8s_runs_as_the_image_user(overlay: str) -> None:
    pod = k8s_object(overlay, "Deployment", "mtserve")["spec"]["template"]["spec"]
    users = [args for keyword, args in dockerfile_instructions() if keyword == "USER"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    user, group = users[-1].split(":")
    assert str(pod["securityContext"]["runAsUser"]) == user
    assert str(pod["securityContext"]["runAsGroup"]) == group
    # The image's user really is in that group (useradd --system alone would pick a gid below 1000).
    (run_user,) = [a for k, a in dockerfile_instructions() if k == "RUN" and "useradd" in a]
    assert f"groupadd --system --gid {group}" in run_user and f"--uid {user} --gid {group}" in run_user


def test_k8s_overlays_are_valid_kubernetes(overlay: str, js_clients: Any) -> None:
    """Every rendered object against Kubernetes' own OpenAPI schemas, strictly (unknown fields refused), from
    1.28 to the newest kubernetes-validate knows; the ServiceMonitor (a CRD) against the Prometheus
    Operator's schema (@kubernetes-models/prometheus-operator)."""
    versions = ["1.28.0", "1.31.0", "1.34.0", kubernetes_validate.latest_version()]
    for o in k8s_objects(overlay):
        if o["kind"] == "ServiceMonitor":
            assert js_clients("servicemonitor", json.dumps(o)) == {"valid": True}
            continue
        for version in versions:
            kubernetes_validate.validate(o, version, strict=True)


def test_a_broken_object_fails_validation(js_clients: Any) -> None:
    """The validators above can fail."""
    deployment = copy.deepcopy(k8s_object("cpu", "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["prots"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)
    monitor = copy.deepcopy(k8s_object("cpu", "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["port"] = 9090
    assert js_clients("servicemonitor", json.dumps(monitor))["valid"] is False


def test_k8s_gpu_overlay_asks_for_a_gpu_on_gpu_nodes(overlay: str) -> None:
    config = container_config(overlay)
    pod = k8s_object(overlay, "Deployment")["spec"]["template"]["spec"]
    limits = container(overlay)["resources"]["limits"]
    image = container(overlay)["image"]
    if overlay == "gpu":
        assert config.device == "cuda" and config.dtype == "float16"
        assert limits["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert image.endswith(":cuda")
    else:
        assert config.device == "cpu"
        assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod and "tolerations" not in pod
        assert image.endswith(":cpu")


def adapter_rules() -> list[dict[str, Any]]:
    return yaml.safe_load((K8S / "prometheus-adapter" / "config.yaml").read_text())["rules"]


def test_k8s_autoscaler_scales_on_waiting_texts_per_pod(overlay: str, promtool: str, tmp_path: Path) -> None:
    config = container_config(overlay)
    hpa = k8s_object(overlay, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mtserve"}
    budget = k8s_object(overlay, "PodDisruptionBudget")["spec"]
    assert hpa["minReplicas"] > budget["minAvailable"], "one pod may be disrupted while another serves"
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    # A quarter of the replica's batch, on average per pod (see hpa.yaml).
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": str(config.max_batch_rows // 4)}
    # prometheus-adapter serves that name, from a series the server exports, per namespace and pod.
    (rule,) = [r for r in adapter_rules() if r["name"]["as"] == metric["pods"]["metric"]["name"]]
    (series,) = promql_metric_names(rule["seriesQuery"])
    assert series in declared_metrics(), series
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert re.fullmatch(rule["name"]["matches"], series)
    # The query the adapter runs, with its template filled as it fills it, parses in Prometheus.
    query = (rule["metricsQuery"].replace("<<.Series>>", series)
             .replace("<<.LabelMatchers>>", 'namespace="default",pod=~"mtserve-a|mtserve-b"')
             .replace("<<.GroupBy>>", "pod"))
    checked = promtool_check_expressions(promtool, {"adapter": query}, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_k8s_service_monitor_scrapes_each_pod_once_as_job_mtserve(overlay: str) -> None:
    monitor = k8s_object(overlay, "ServiceMonitor")["spec"]
    config = container_config(overlay)
    services = [o for o in k8s_objects(overlay) if o["kind"] == "Service"
                and monitor["selector"]["matchLabels"].items() <= o["metadata"]["labels"].items()]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["path"] == "/metrics"
    # Only one selected Service has the port: one target per pod, whose job is that Service's name.
    with_port = [s for s in services if endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}]
    assert [s["metadata"]["name"] for s in with_port] == ["mtserve"]
    (port,) = [p for p in with_port[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
    container_ports = {p["name"]: p["containerPort"] for p in container(overlay)["ports"]}
    assert container_ports[port["targetPort"]] == config.metrics_port
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    assert 'job="mtserve"' in alerts


def test_k8s_network_policy_opens_grpc_and_metrics_only(overlay: str) -> None:
    policy = k8s_object(overlay, "NetworkPolicy")["spec"]
    pod_labels = k8s_object(overlay, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"] and policy["egress"] == []
    container_ports = {p["name"] for p in container(overlay)["ports"]}
    opened = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            assert port["port"] in container_ports, port
            opened[port["port"]] = rule.get("from")
    assert opened.keys() == {"grpc", "metrics"}
    assert opened["grpc"] is None  # any client, and kubelet's probes
    assert opened["metrics"], "metrics: Prometheus only"


# -- docker compose ---------------------------------------------------------------------------------------


def service_config(name: str, service: dict[str, Any]) -> ServerConfig:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    command = service.get("command", [])
    assert isinstance(command, list), f"{name}: give command as a list"
    return serve_config(command, environment, f"docker-compose.yml service {name}")


def test_compose_runs_two_replicas_with_real_settings() -> None:
    services = mtserve_services()
    assert len(services) == 2, sorted(services)
    for name, service in services.items():
        config = service_config(name, service)
        assert {str(config.port), str(config.metrics_port)} <= set(map(str, service.get("expose", []))), name
        # docker stop waits this long before SIGKILL: the drain must fit.
        assert seconds(service["stop_grace_period"]) > config.grace_seconds, name


def test_compose_nginx_balances_over_the_replicas() -> None:
    services = compose()["services"]
    nginx = services["nginx"]
    mounts = dict(volume.split(":")[:2] for volume in nginx["volumes"])
    for source in mounts:
        assert (DEPLOY / source).is_file(), source
    # mtserve.conf replaces the stock image's server config; its include finds the replica list in the
    # main config's directory (/etc/nginx).
    assert mounts["./nginx/mtserve.conf"].startswith("/etc/nginx/conf.d/")
    include = re.search(r"^\s*include\s+(\S+);", (DEPLOY / "nginx" / "mtserve.conf").read_text(), re.M)
    assert include and mounts["./nginx/replicas-dns.conf"] == f"/etc/nginx/{include.group(1)}"
    # The name nginx resolves is every replica's network alias, on the port they serve.
    name = re.search(r"^\s*default\s+([^:\s]+):(\d+);", (DEPLOY / "nginx" / "replicas-dns.conf").read_text(), re.M)
    assert name, "replicas-dns.conf: no `default NAME:PORT;`"
    for replica, service in mtserve_services().items():
        assert name.group(1) in service["networks"]["default"]["aliases"], replica
        assert int(name.group(2)) == service_config(replica, service).port, replica
    # Docker's embedded DNS.
    assert re.search(r"^resolver\s+127\.0\.0\.11\s", (DEPLOY / "nginx" / "replicas-dns.conf").read_text(), re.M)
    assert set(nginx["depends_on"]) == set(mtserve_services())
    listen = re.findall(r"^\s*listen\s+(\d+)\s+http2\s*;", (DEPLOY / "nginx" / "mtserve.conf").read_text(), re.M)
    assert [f"{port}:{port}" for port in listen] == nginx["ports"]


def test_compose_prometheus_scrapes_every_replica() -> None:
    services = compose()["services"]
    mounts = dict(volume.split(":")[:2] for volume in services["prometheus"]["volumes"])
    assert mounts["./prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "mtserve"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    expected = [f"{name}:{service_config(name, s).metrics_port}" for name, s in mtserve_services().items()]
    assert sorted(targets) == sorted(expected)
    assert job.get("metrics_path", "/metrics") == "/metrics"


# -- the image ----------------------------------------------------------------------------------------------


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.12-slim"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert args["TORCH_VERSION"] == "2.13.0"
    runs = [a for k, a in instructions if k == "RUN"]
    assert any('--index-url "${TORCH_INDEX_URL}"' in r and '"torch==${TORCH_VERSION}"' in r for r in runs)
    assert any(re.search(r"\bpip install \.(\s|$)", r) for r in runs)
    # The torch from the index must be installed before the project, so that pip keeps it.
    torch_at = next(i for i, (k, a) in enumerate(instructions) if k == "RUN" and "TORCH_INDEX_URL" in a)
    project_at = next(i for i, (k, a) in enumerate(instructions) if k == "RUN" and "pip install ." in a)
    assert torch_at < project_at
    (user,) = [a for k, a in instructions if k == "USER"]
    assert user not in ("root", "0")
    # BuildKit fetches the frontend a `# syntax=` line names from a registry: an offline build fails.
    assert "# syntax=" not in (DEPLOY / "Dockerfile").read_text()
    assert keywords.index("USER") > keywords.index("FROM", 1)  # in the final stage
    defaults = ServerConfig()
    (exposed,) = [a.split() for k, a in instructions if k == "EXPOSE"]
    assert sorted(map(int, exposed)) == sorted([defaults.port, defaults.metrics_port])
    (entrypoint,) = [a for k, a in instructions if k == "ENTRYPOINT"]
    assert entrypoint == '["mtserve", "serve"]'
    assert "CMD" not in keywords  # no arguments by default: the bundled model
    assert f"'{defaults.port}'" in healthcheck_command()[-1]  # MTSERVE_PORT's default


def test_dockerfile_copies_every_package() -> None:
    """What `pip install .` needs: pyproject.toml, its readme and every package directory."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = set()
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY" and not arguments.startswith("--from"):
            copied |= set(arguments.split()[:-1])
    # A subpackage (model/tokenizers) comes with its parent's directory.
    missing = {path for path in needed if not any(path == c or path.startswith(f"{c}/") for c in copied)}
    assert not missing, sorted(missing)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative to the context) out: the last matching pattern decides, and a
    pattern that matches a parent directory matches what is inside it."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        regex = re.escape(body.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if re.fullmatch(rf"{regex}(/.*)?", path):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_the_package_and_drops_local_state() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    kept = ["pyproject.toml", "README.md", "model/default/model.safetensors", "model/default/config.json",
            "model/default/source.spm", "model/data.py", "proto/mtserve/v1/translation.proto", "server/app.py",
            "client/client.py"]
    kept += [str(p.relative_to(REPO)) for p in (REPO / "model" / "default").iterdir()]
    dropped = [".venv/bin/python", "data/de-en/train.tsv", "runs/x/model.safetensors", "benchmarks/.cache/m",
               ".git/HEAD", "server/__pycache__/app.cpython-311.pyc", ".pytest_cache/v", ".ruff_cache/x",
               "mtserve.egg-info/PKG-INFO"]
    assert [p for p in kept if dockerignored(p, patterns)] == []
    assert [p for p in dropped if not dockerignored(p, patterns)] == []


def test_dockerignore_matcher() -> None:
    """The matcher above follows Docker's rules on the cases the test relies on."""
    assert dockerignored("data/x", ["data"]) and not dockerignored("model/data.py", ["data"])
    assert dockerignored("a/b/__pycache__/c.pyc", ["**/__pycache__"])
    assert not dockerignored("model/default/m.pt", ["**/*.pt", "!model/default/*"])
    assert dockerignored("runs/m.pt", ["**/*.pt", "!model/default/*"])


def test_compose_paths_exist() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context == REPO and (context / build["dockerfile"]).is_file(), build
