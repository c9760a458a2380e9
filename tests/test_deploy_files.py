"""The deployment files parse and agree with each other and with the application (README.md, 'Deployment').

Docker is not available where the tests run, so the image is not built here: these tests check the
facts that a broken deployment would get wrong first (probe paths, ports, non-root, settings names).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
CONTAINER_PORT = 8080
METRICS_PORT = 9090


def _documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def _kubernetes_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in _documents(path):
            objects[(document["kind"], document["metadata"]["name"])] = document
    return objects


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return _kubernetes_objects()


@pytest.fixture(scope="module")
def deployment(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return objects[("Deployment", "cds-service")]


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda path: str(path.relative_to(DEPLOY)))
def test_every_yaml_file_parses_into_mappings(path: Path) -> None:
    documents = _documents(path)
    assert documents, f"{path} is empty"
    assert all(isinstance(document, dict) for document in documents)


def test_kustomization_lists_every_manifest_except_the_secret_example() -> None:
    listed = set(_documents(KUBERNETES / "kustomization.yaml")[0]["resources"])
    present = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present


def test_probe_paths_are_routes_of_the_application(container: dict[str, Any], tmp_path: Path) -> None:
    from cds_service.app import create_app
    from cds_service.settings import Settings

    app = create_app(Settings(data_dir=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'store.sqlite3'}"),
                     {"TESTING": True})
    routes = {rule.rule for rule in app.url_map.iter_rules() if "GET" in (rule.methods or set())}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in routes, probe


def test_pods_run_as_non_root_with_a_read_only_root_filesystem(deployment: dict[str, Any],
                                                               container: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_writable_paths_are_empty_dirs(deployment: dict[str, Any], container: dict[str, Any],
                                       objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    data_dir = objects[("ConfigMap", "cds-service-config")]["data"]["CDS_DATA_DIR"]
    for path in (data_dir, "/tmp"):
        assert "emptyDir" in volumes[mounts[path]], path


def test_two_replicas_with_resources_and_a_disruption_budget(deployment: dict[str, Any], container: dict[str, Any],
                                                             objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert deployment["spec"]["replicas"] == 2
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    pdb = objects[("PodDisruptionBudget", "cds-service")]
    assert pdb["apiVersion"] == "policy/v1"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_horizontal_autoscaler_targets_the_deployment_at_70_percent_cpu(
        objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    hpa = objects[("HorizontalPodAutoscaler", "cds-service")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cds-service"}
    assert hpa["spec"]["minReplicas"] >= 2
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


def test_service_port_reaches_the_container_port(deployment: dict[str, Any], container: dict[str, Any],
                                                 objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    service = objects[("Service", "cds-service")]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    [service_port] = service["spec"]["ports"]
    target = service_port["targetPort"]
    assert (ports[target] if isinstance(target, str) else target) == CONTAINER_PORT
    assert f"--port\x00{CONTAINER_PORT}" in "\x00".join(container["args"])


def test_settings_come_from_a_config_map_and_a_secret(container: dict[str, Any],
                                                      objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    sources = {next(iter(source)): next(iter(source.values()))["name"] for source in container["envFrom"]}
    config = objects[("ConfigMap", sources["configMapRef"])]["data"]
    secret = objects[("Secret", sources["secretRef"])]["stringData"]
    assert secret["CDS_DATABASE_URL"].startswith("postgresql://")
    assert secret["CDS_REDIS_URL"].startswith("redis://")
    assert "CDS_ALLOW_OPEN" not in config, "production authenticates its clients"
    # Every name is a setting the service reads: a typo would be silently ignored at run time.
    known = set(re.findall(r"\"(CDS_[A-Z_]+)\"", (REPO / "cds_service" / "settings.py").read_text()))
    assert set(config) | set(secret) <= known


def test_trusted_clients_file_is_mounted_where_the_setting_points(
        container: dict[str, Any], deployment: dict[str, Any], objects: dict[tuple[str, str], dict[str, Any]],
        tmp_path: Path) -> None:
    path = Path(objects[("ConfigMap", "cds-service-config")]["data"]["CDS_TRUSTED_CLIENTS"])
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    volume = volumes[mounts[str(path.parent)]]
    clients_map = objects[("ConfigMap", volume["configMap"]["name"])]
    assert path.name in clients_map["data"]
    # The file the pods will read loads with the service's own loader.
    from cds_service.security import load_trusted_clients

    clients_file = tmp_path / path.name
    clients_file.write_text(clients_map["data"][path.name])
    clients = load_trusted_clients(str(clients_file))
    assert clients and all(client.jwks_url and client.jwks_url.startswith("https://") for client in clients)
    assert all(server.startswith("https://") for client in clients for server in client.fhir_servers)


def test_dockerfile_habits() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in dockerfile.splitlines()
                    if line.strip() and not line.startswith((" ", "#"))]
    keywords = [parts[0] for parts in instructions]
    arguments = [parts[1] if len(parts) > 1 else "" for parts in instructions]
    assert arguments[keywords.index("FROM")] == "python:3.11-slim"
    copies = [argument for keyword, argument in zip(keywords, arguments, strict=True) if keyword == "COPY"]
    assert copies[0] == "pyproject.toml constraints.txt ./", "dependencies are installed before the source is copied"
    assert any(copy.startswith("cds_service") for copy in copies[1:])
    user = arguments[keywords.index("USER")]
    assert user.split(":")[0] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("CMD")
    assert arguments[keywords.index("EXPOSE")] == f"{CONTAINER_PORT} {METRICS_PORT}"
    assert '"--port", "8080"' in arguments[keywords.index("CMD")]
    assert f'"--metrics-port", "{METRICS_PORT}"' in arguments[keywords.index("CMD")]
    assert "CDS_ALLOW_OPEN" not in dockerfile.replace("-e CDS_ALLOW_OPEN=1", "")
    assert "CDS_HOOKS_DIR=" in dockerfile
    healthcheck = dockerfile[dockerfile.index("\nHEALTHCHECK "):]
    assert "/healthz" in healthcheck.split("CMD", 2)[1] and "curl" not in healthcheck


def test_dockerfile_python_snippets_compile() -> None:
    # Docker joins backslash-continued lines; the joined `python -c "..."` programs must be valid Python.
    joined = (DEPLOY / "Dockerfile").read_text().replace("\\\n", "")
    snippets = re.findall(r'^RUN python -c "(.*)"$', joined, flags=re.MULTILINE)
    snippets += re.findall(r'"python", "-c", "(.*?)"\]', joined)
    assert len(snippets) == 2
    for snippet in snippets:
        compile(snippet, "<Dockerfile>", "exec")


def test_compose_stack_has_healthchecked_postgres_and_redis() -> None:
    [compose] = _documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    for name in ("proxy", "cds-service", "postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    app = services["cds-service"]
    assert app["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                 "redis": {"condition": "service_healthy"}}
    assert app["environment"]["CDS_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in app["environment"]["CDS_DATABASE_URL"]
    assert app["environment"]["CDS_REDIS_URL"].startswith("redis://redis:6379")
    # Open mode is acceptable locally only because every published port is on loopback; the API is reached
    # through the proxy only.
    for service in services.values():
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", []))
    assert [str(port) for port in app["ports"]] == [f"127.0.0.1:{METRICS_PORT}:{METRICS_PORT}"]
    assert [str(port) for port in services["proxy"]["ports"]] == [f"127.0.0.1:{CONTAINER_PORT}:{CONTAINER_PORT}"]
    assert app["build"]["dockerfile"] == "deploy/Dockerfile"


def test_compose_puts_a_buffering_proxy_in_front_of_the_service() -> None:
    [compose] = _documents(DEPLOY / "compose.yaml")
    proxy = compose["services"]["proxy"]
    assert proxy["image"].startswith("nginx:")
    assert proxy["depends_on"] == {"cds-service": {"condition": "service_healthy"}}
    [mount] = proxy["volumes"]
    source, target, mode = mount.split(":")
    assert (DEPLOY / source).resolve() == DEPLOY / "nginx.conf" and target == "/etc/nginx/nginx.conf" and mode == "ro"
    conf = (DEPLOY / "nginx.conf").read_text()
    directives = dict(re.findall(r"^\s*([a-z_]+)\s+([^;{]+);", conf, flags=re.MULTILINE))
    assert directives["proxy_request_buffering"] == "on"
    assert directives["client_header_timeout"] == "10s" and directives["client_body_timeout"] == "10s"
    assert re.search(rf"server cds-service:{CONTAINER_PORT};", conf)
    assert f"listen {CONTAINER_PORT};" in conf
    assert directives["proxy_pass"] == "http://cds_service"


def test_every_readiness_check_is_readyz_and_every_liveness_check_healthz(container: dict[str, Any]) -> None:
    # /readyz does not fail because the store is down (tests/test_app.py, tests/test_operations.py).
    [compose] = _documents(DEPLOY / "compose.yaml")
    assert "/readyz" in " ".join(compose["services"]["cds-service"]["healthcheck"]["test"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "/healthz" in dockerfile[dockerfile.index("\nHEALTHCHECK "):]


def test_termination_waits_for_endpoint_removal_then_for_the_drain(deployment: dict[str, Any],
                                                                  container: dict[str, Any]) -> None:
    from cds_service.serving import GRACEFUL_TIMEOUT_S, _drain_limit

    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert pre_stop >= 5, "endpoint removal reaches kube-proxies and ingresses within a few seconds"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + _drain_limit(GRACEFUL_TIMEOUT_S) + GRACEFUL_TIMEOUT_S
    [compose] = _documents(DEPLOY / "compose.yaml")
    stop_grace = int(str(compose["services"]["cds-service"]["stop_grace_period"]).removesuffix("s"))
    assert stop_grace >= _drain_limit(GRACEFUL_TIMEOUT_S) + GRACEFUL_TIMEOUT_S


def test_metrics_port_is_scraped_and_not_in_the_service(deployment: dict[str, Any], container: dict[str, Any],
                                                        objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert int(annotations["prometheus.io/port"]) == ports["metrics"] == METRICS_PORT
    args = container["args"]
    assert args[args.index("--metrics-port") + 1] == str(METRICS_PORT)
    service = objects[("Service", "cds-service")]
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]


def test_metrics_files_have_a_memory_filesystem(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    [compose] = _documents(DEPLOY / "compose.yaml")
    assert compose["services"]["cds-service"]["shm_size"]


def test_compose_redis_keeps_the_replay_cache_across_restarts() -> None:
    # tests/test_operations.py restarts a redis-server started with these arguments and replays a token.
    [compose] = _documents(DEPLOY / "compose.yaml")
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in ("always", "everysec")
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"])


def _requirement_lines(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_one_constraints_file_pins_every_dependency_for_the_image_and_ci() -> None:
    import tomllib

    from packaging.requirements import Requirement

    pins = _requirement_lines(REPO / "constraints.txt")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"],
              *(requirement for extra in project["project"]["optional-dependencies"].values() for requirement in extra)]
    for text in wanted:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-").replace(".", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (text, pins[name])
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "'--constraint', 'constraints.txt'" in dockerfile
    assert "pip install --no-deps --no-build-isolation ." in dockerfile  # the code layer installs nothing else
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -q -c constraints.txt -e '.[test]'" in ci
    assert 'PIP_CONSTRAINT="$PWD/constraints.txt"' in ci


def test_one_python_version_everywhere() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["requires-python"] == ">=3.11"  # the README promises any 3.11 or newer
    assert project["tool"]["mypy"]["python_version"] == "3.11"
    assert project["tool"]["ruff"]["target-version"] == "py311"
    assert "FROM python:3.11-slim" in (DEPLOY / "Dockerfile").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "python3 -m venv .venv" in ci and "sys.version_info[:2] == (3, 11)" in ci  # CI checks it runs 3.11
    assert "with Python 3.11" in (REPO / "constraints.txt").read_text()


def test_podman_and_buildah_builds_keep_the_healthcheck() -> None:
    for text in ((DEPLOY / "Dockerfile").read_text(), (DEPLOY / "README.md").read_text()):
        assert "podman build --format docker -f deploy/Dockerfile" in text
        assert "buildah build --format docker -f deploy/Dockerfile" in text
