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
    assert arguments[keywords.index("FROM")] == "python:3.12-slim"
    copies = [argument for keyword, argument in zip(keywords, arguments, strict=True) if keyword == "COPY"]
    assert copies[0].startswith("pyproject.toml"), "dependencies are installed before the source is copied"
    assert any(copy.startswith("cds_service") for copy in copies[1:])
    user = arguments[keywords.index("USER")]
    assert user.split(":")[0] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("CMD")
    assert arguments[keywords.index("EXPOSE")] == str(CONTAINER_PORT)
    assert '"--port", "8080"' in arguments[keywords.index("CMD")]
    assert "CDS_ALLOW_OPEN" not in dockerfile.replace("-e CDS_ALLOW_OPEN=1", "")
    assert "CDS_HOOKS_DIR=" in dockerfile
    healthcheck = dockerfile[dockerfile.index("HEALTHCHECK"):]
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
    for name in ("cds-service", "postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    app = services["cds-service"]
    assert app["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                 "redis": {"condition": "service_healthy"}}
    assert app["environment"]["CDS_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in app["environment"]["CDS_DATABASE_URL"]
    assert app["environment"]["CDS_REDIS_URL"].startswith("redis://redis:6379")
    # Open mode is acceptable locally only because the port is published on loopback.
    assert all(str(port).startswith("127.0.0.1:") for port in app["ports"])
    assert str(app["ports"][0]).endswith(f":{CONTAINER_PORT}")
    assert app["build"]["dockerfile"] == "deploy/Dockerfile"
