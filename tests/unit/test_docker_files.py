"""Static checks of docker/: the compose stack's wiring, the Dockerfile's essentials, Prometheus and the Grafana dashboard.

No Docker engine needed; promtool (Debian's `prometheus` package) is used when it is on PATH.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"

# The metrics docingest pushes (names and labels are a contract with the dashboard).
GAUGES = {
    "docingest_documents_total",
    "docingest_chunks_total",
    "docingest_embed_chunks_per_second",
    "docingest_documents_in_flight",
    "docingest_failures_total",
    "docingest_last_success_timestamp_seconds",
    "docingest_run_duration_seconds",
    "docingest_run_status",
}
HISTOGRAMS = {"docingest_stage_duration_seconds", "docingest_embed_batch_size"}
SERVICES = {"postgres", "prefect-server", "worker", "qdrant", "minio", "pushgateway", "prometheus", "grafana"}


def _pin(name: str) -> str:
    match = re.search(rf"^{name}==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert match, f"{name} is not pinned in constraints.txt"
    return match.group(1)


# ---- compose -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]


def test_compose_defines_the_stack(services):
    assert not SERVICES - services.keys(), f"missing services: {SERVICES - services.keys()}"
    assert services["prefect-server"]["image"] == f"prefecthq/prefect:{_pin('prefect')}-python3.11"
    assert services["postgres"]["image"] == "postgres:16"


def test_every_service_depended_on_has_a_healthcheck(services):
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert "healthcheck" in services[dep], f"{name} depends on {dep}, which has no healthcheck"
            assert spec["condition"] in ("service_healthy", "service_completed_successfully"), (name, dep)


def test_worker_runs_the_image_and_uses_services_by_name(services):
    worker = services["worker"]
    # The image scripts/docker-build.sh builds (compose cannot: the build needs the script's wheelhouse), the one the
    # `docker` deployment runs too.
    assert "build" not in worker and worker["pull_policy"] == "never"
    assert worker["image"] == _script_default_image() == _docker_pool_job_variables()["image"]
    command = " ".join(worker["command"]) if isinstance(worker["command"], list) else worker["command"]
    assert "prefect work-pool create local-pool --type process" in command
    assert "prefect worker start --pool local-pool" in command
    env = worker["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["DOCINGEST_QDRANT_URL"] == "http://qdrant:6333"
    assert env["DOCINGEST_S3_ENDPOINT"] == "http://minio:9000"
    assert env["DOCINGEST_PUSHGATEWAY_URL"] == "http://pushgateway:9091"
    for key in ("PREFECT_API_URL", "DOCINGEST_QDRANT_URL", "DOCINGEST_S3_ENDPOINT", "DOCINGEST_PUSHGATEWAY_URL"):
        assert urlparse(env[key]).hostname in worker["depends_on"], f"{key} points at a service the worker does not wait for"
    assert env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    assert any(volume.endswith(":/data") for volume in worker["volumes"])


def test_compose_network_is_the_one_the_docker_deployment_joins():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert _docker_pool_job_variables()["networks"] == [compose["networks"]["default"]["name"]]


def test_credentials_come_from_env_with_local_defaults(services):
    secrets = [
        services["postgres"]["environment"]["POSTGRES_PASSWORD"],
        services["minio"]["environment"]["MINIO_ROOT_PASSWORD"],
        services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"],
    ]
    assert all(re.fullmatch(r"\$\{[A-Z_]+:-[^}]+\}", value) for value in secrets), secrets


def test_mounted_config_files_exist_and_match(services):
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name} mounts missing {source}"
    prometheus = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["pushgateway"]["honor_labels"] is True
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == ["pushgateway:9091"]
    assert "prometheus" in jobs
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/docingest.yaml").read_text())["providers"][0]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in services["grafana"]["volumes"]


# ---- Dockerfile --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            result.append([])
        result[-1].append((instruction.upper(), args.strip()))
    return result[1:]


def _args(stage, instruction: str) -> list[str]:
    return [args for ins, args in stage if ins == instruction]


def _arg_defaults() -> dict[str, str]:
    """ARG defaults, including those before the first FROM."""
    found = re.findall(r"^ARG (\w+)=(\S*)", DOCKERFILE.read_text(), re.MULTILINE)
    return {name: value.strip('"') for name, value in found}


def _script_default_image() -> str:
    return re.search(r"^IMAGE=\$\{DOCINGEST_IMAGE:-(\S+)\}$", (ROOT / "scripts/docker-build.sh").read_text(),
                     re.MULTILINE).group(1)


def _docker_pool_job_variables() -> dict:
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    return next(d for d in deployments if d["name"] == "docker")["work_pool"]["job_variables"]


def test_dockerfile_base_is_a_python_311_image_given_by_a_build_arg(stages):
    assert len(stages) == 1 and stages[0][0][1] == "${BASE_IMAGE}"
    assert _arg_defaults()["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    assert not DOCKERFILE.read_text().startswith("# syntax=")  # would pull the frontend from Docker Hub


def test_dockerfile_final_stage_is_non_root_and_offline(stages):
    final = stages[-1]
    assert _args(final, "USER")[-1] == "docingest"
    assert any("--uid 1000" in run for run in _args(final, "RUN"))
    env = " ".join(_args(final, "ENV"))
    for setting in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "DOCINGEST_HOME=/data/docingest", "PYTHONUNBUFFERED=1",
                    "HF_HOME="):
        assert setting in env
    assert _args(final, "HEALTHCHECK")
    assert _args(final, "CMD") == ['["docingest", "--help"]']
    assert not _args(final, "ENTRYPOINT")  # a Docker work pool sets the flow run's command itself
    assert any("tesseract-ocr" in run and " git " in run for run in _args(final, "RUN"))


def test_dockerfile_installs_python_packages_only_from_the_wheelhouse(stages):
    runs = [run for stage in stages for run in _args(stage, "RUN")]
    pip = [run for run in runs if "pip install" in run]
    assert len(pip) == 2 and all("--no-index" in run for run in pip)
    deps = pip[0]
    assert "--mount=type=bind,source=docker/wheelhouse,target=/wheels" in deps
    assert "--find-links /wheels -r /wheels/requirements.txt -c /wheels/constraints.txt" in deps and "pip check" in deps
    assert re.search(r"pip install --no-index --no-deps --no-build-isolation \.(\s|$)", pip[1])  # docingest itself
    text = DOCKERFILE.read_text()
    assert "download.pytorch.org" not in text and "torchvision" not in " ".join(runs)  # the host's CPU torch only


def test_dockerfile_downloads_pdf_models_only_when_asked(stages):
    final = stages[-1]
    assert _arg_defaults()["PDF_MODELS"] == "false"
    steps = [(i, args) for i, (ins, args) in enumerate(final) if ins == "RUN" and "docling-tools models download" in args]
    assert len(steps) == 1
    at, run = steps[0]
    assert run.startswith("--mount=type=secret,id=ca ") and '[ "$PDF_MODELS" = true ]' in run
    offline = min(i for i, (ins, args) in enumerate(final) if ins == "ENV" and "HF_HUB_OFFLINE=1" in args)
    assert offline > at  # the download needs the hub; everything after it runs offline
    folder = re.search(r"--output-dir ([^\s;]+)", run).group(1)
    assert f"DOCLING_ARTIFACTS_PATH={folder}" in " ".join(_args(final, "ENV"))
    assert any(folder in args for args in _args(final, "RUN") if "mkdir" in args)  # exists (empty) without models


def test_build_script_passes_what_the_dockerfile_reads():
    script = (ROOT / "scripts/docker-build.sh").read_text()
    defaults = _arg_defaults()
    for arg in ("BASE_IMAGE", "PDF_MODELS"):
        assert f'--build-arg "{arg}=' in script and arg in defaults
    assert 'DEFAULT_BASE=python:3.11-slim-bookworm' in script
    assert '--secret "id=ca,src=$CA"' in script and "/etc/ssl/certs/ca-certificates.crt" in script
    assert "debootstrap --variant=minbase" in script and "import" in script
    assert "-f docker/Dockerfile" in script
    # The wheelhouse handed to the build is never committed, and is let into the build context.
    assert "/docker/wheelhouse/" in (ROOT / ".gitignore").read_text().splitlines()
    assert "!docker/wheelhouse/" in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()


def test_dockerignore_keeps_the_context_small(stages):
    lines = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    for pattern in ("**/.venv", "**/.git", "**/.docingest", "**/.pytest_cache"):
        assert pattern in lines
    if "*" in lines:  # allow-list: everything the Dockerfile copies or bind-mounts from the context must be let in
        for stage in stages:
            for args in _args(stage, "COPY"):
                if not args.startswith("--from"):
                    for source in args.split()[:-1]:
                        assert f"!{source}" in lines or f"!{source}/" in lines, source
            for args in _args(stage, "RUN"):
                for source in re.findall(r"--mount=type=bind,source=([^,\s]+)", args):
                    assert f"!{source}" in lines or f"!{source}/" in lines, source


# ---- Grafana dashboard ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DOCKER / "grafana/dashboards/docingest.json").read_text())


def _panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return panels


def _exprs(dashboard: dict) -> list[str]:
    exprs = [target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", [])]
    variables = [var["query"]["query"] for var in dashboard["templating"]["list"] if var["type"] == "query"]
    return exprs + variables


def test_dashboard_identity_and_variables(dashboard):
    assert dashboard["uid"] == "docingest" and dashboard["schemaVersion"] >= 36
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    for name in ("collection", "scope"):
        assert variables[name]["query"]["query"].startswith("label_values(")
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_dashboard_promql_uses_only_docingest_metrics(dashboard):
    seen = set()
    for expr in _exprs(dashboard):
        for name in re.findall(r"docingest_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in GAUGES:
                seen.add(name)
            else:
                assert base in HISTOGRAMS and base != name, f"unknown metric {name} in {expr!r}"
                seen.add(base)
    assert seen == GAUGES | HISTOGRAMS, f"metrics on no panel: {(GAUGES | HISTOGRAMS) - seen}"


def test_dashboard_has_stage_quantiles_and_staleness(dashboard):
    exprs = _exprs(dashboard)
    for q in ("0.5", "0.95", "0.99"):
        assert any(e.startswith(f"histogram_quantile({q},") and "docingest_stage_duration_seconds_bucket" in e for e in exprs)
    assert any(e.startswith("time() - ") and "docingest_last_success_timestamp_seconds" in e for e in exprs)


# ---- promtool ----------------------------------------------------------------------------------------------------

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH (apt-get install prometheus)")


@needs_promtool
def test_promtool_accepts_prometheus_config():
    run = subprocess.run(["promtool", "check", "config", str(DOCKER / "prometheus/prometheus.yml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_expression(dashboard, tmp_path):
    exprs = [e.replace("$collection", ".*").replace("$scope", ".*") for e in _exprs(dashboard) if not e.startswith("label_values(")]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    run = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_prepares_prefects_temporary_database_as_the_runtime_user(stages):
    final = stages[-1]
    user_at = max(i for i, (ins, _) in enumerate(final) if ins == "USER")
    runs = [(i, args) for i, (ins, args) in enumerate(final) if ins == "RUN" and "-m docingest.ephemeral" in args]
    assert len(runs) == 1 and runs[0][0] > user_at  # in the home of the user that runs the containers
    assert "PREFECT_SERVER_ANALYTICS_ENABLED=false" in runs[0][1]
