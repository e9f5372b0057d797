"""deploy/: the image, the compose stack and the Kubernetes manifests, checked with what runs here.

No Docker engine and no Kubernetes cluster here. The image is checked by what its instructions do: the
build stage's COPY instructions are carried out from the build context its .dockerignore lets through and
its wheel is built and unpacked, so the package it would install must import and run `scorer run --help`
from there with its runtime dependencies only; the HEALTHCHECK command must tell a live metrics endpoint
from a dead one; the default model the image bakes in must load. The Dockerfile is also linted
(dockerfilelint). The compose file is resolved by `docker-compose config`, Prometheus' config by
`promtool check config`, the kustomizations are rendered by `kubectl kustomize` and every built-in
resource is validated against the Kubernetes 1.31 schemas (kubernetes-validate, strict). Every SCORER_*
name anywhere in deploy/ must be a setting.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from prometheus_client import CollectorRegistry

from scorer import __version__
from scorer.cli.main import build_parser
from scorer.config import ENV_PREFIX, Settings, from_env, load_settings
from scorer.model.onnx import OnnxModel
from scorer.model.registry import Registry
from scorer.runtime.health import HealthServer
from scorer.scoring.loop import ACK_TIMEOUT_S
from tests.unit.dockerfile import context, copy_sources, exec_form, materialise, stages

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.31.0"
LINTER = ROOT / ".tools" / "node_modules" / ".bin" / "dockerfilelint"
LONG_RUNNING = {
    "scorer",
    "scorer-aggregator",
    "scorer-monitor",
    "scorer-serve",
    "scorer-store",
    "scorer-console",
}
RETRAIN = "scorer-retrain"  # a CronJob, not long-running: scraped in compose, in Kubernetes while a run lasts
LOCAL_STACK_PASSWORD = "local-stack-only"  # noqa: S105 - compose.yaml's public default, marked as such there
CHOSEN_PASSWORD = "chosen-elsewhere"  # noqa: S105 - a stand-in
BUILTIN_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"}


def tool(path: str | Path, hint: str) -> str:
    found = shutil.which(str(path)) if not Path(path).is_file() else str(path)
    if found is None:
        pytest.fail(f"{path} not found: {hint} (make test installs it)")
    return found


def build(directory: Path) -> list[dict[str, Any]]:
    """The resources `kubectl kustomize directory` renders."""
    kubectl = tool("kubectl", "kubectl is on the machine image (it renders with its built-in kustomize)")
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return build(DEPLOY / "k8s" / "base")


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return build(DEPLOY / "k8s" / "overlays" / "production")


def find(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(hits) == 1, (kind, name)
    return hits[0]


def containers(r: dict[str, Any]) -> list[dict[str, Any]]:
    return list(r["spec"]["template"]["spec"]["containers"])


# -- the image ---------------------------------------------------------------------------------------------


def test_dockerfile_passes_the_linter() -> None:
    linter = tool(LINTER, "npm install --prefix .tools dockerfilelint")
    done = subprocess.run([linter, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build stage carried out: its COPYs from the filtered context, its wheel built and unpacked."""
    build_stage = stages(DEPLOY / "Dockerfile")[0]
    assert "pip wheel" in build_stage.last("RUN") and build_stage.last("RUN").endswith(
        ' ".[serve,store,console]"'
    )
    files = context(ROOT, DEPLOY / "Dockerfile.dockerignore")
    src = materialise(ROOT, files, build_stage, tmp_path_factory.mktemp("src"))
    wheels = tmp_path_factory.mktemp("wheels")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(src)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = wheels.glob("scorer-*.whl")
    unpacked = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(unpacked)
    return unpacked


def test_the_build_context_holds_what_the_image_needs_and_nothing_else() -> None:
    files = context(ROOT, DEPLOY / "Dockerfile.dockerignore")
    assert {f.split("/")[0] for f in files} == {"pyproject.toml", "README.md", "scorer", "models", "schemas"}
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    for stage in stages(DEPLOY / "Dockerfile"):
        for sources, _ in copy_sources(stage):
            assert all(any(f == s or f.startswith(s + "/") for f in files) for s in sources), sources


def test_the_image_installs_every_module_and_only_the_runtime_dependencies(package: Path) -> None:
    installed = {p.relative_to(package).as_posix() for p in package.rglob("*.py")}
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "scorer").rglob("*.py")}
    assert installed == shipped
    assert (package / "scorer" / "py.typed").is_file()
    (info,) = package.glob("scorer-*.dist-info")
    lines = (info / "METADATA").read_text().splitlines()
    runtime = [x.split(":", 1)[1] for x in lines if x.startswith("Requires-Dist:") and "extra ==" not in x]
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {Requirement(r) for r in runtime} == {Requirement(d) for d in declared}
    install = stages(DEPLOY / "Dockerfile")[-1].last("RUN")
    # the package with the serve, store and console extras only: not the postgres extra's embedded server (41 MB
    # of PostgreSQL binaries for tests and demos; the image's store and console point at a real PostgreSQL)
    assert '--find-links /wheels "scorer[serve,store,console]" ' in install
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def pins(requirements: list[str]) -> set[tuple[str, str]]:  # name and versions (markers differ in form)
        return {(Requirement(r).name, str(Requirement(r).specifier)) for r in requirements}

    for extra in ("serve", "store", "console"):
        wheel = [
            x.split(":", 1)[1] for x in lines if x.startswith("Requires-Dist:") and f'extra == "{extra}"' in x
        ]
        assert pins(wheel) == pins(extras[extra]), extra
    assert not {Requirement(r).name for r in extras["store"]} & {
        Requirement(r).name for r in extras["postgres"]
    }


def test_the_entrypoint_and_command_run_the_scorer_from_the_installed_package(
    package: Path, tmp_path: Path
) -> None:
    runtime = stages(DEPLOY / "Dockerfile")[-1]
    entrypoint, command = exec_form(runtime.last("ENTRYPOINT")), exec_form(runtime.last("CMD"))
    (info,) = package.glob("scorer-*.dist-info")
    scripts = dict(re.findall(r"^(\S+) = (\S+)$", (info / "entry_points.txt").read_text(), re.M))
    module, _, function = scripts[entrypoint[0]].partition(":")
    code = f"import sys; from {module} import {function} as main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(package)}
    args = [sys.executable, "-c", code, *entrypoint[1:], *command, "--help"]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "usage: scorer run" in done.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import scorer; print(scorer.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(package))  # the unpacked wheel, not the repository


def test_the_healthcheck_tells_a_live_scorer_from_a_dead_one() -> None:
    runtime = stages(DEPLOY / "Dockerfile")[-1]
    check = exec_form(runtime.last("HEALTHCHECK"))
    assert check[0] == "python"
    server = HealthServer(CollectorRegistry(), "127.0.0.1", 0, lambda: True).start()
    env = {**os.environ, "SCORER_METRICS_PORT": str(server.port)}
    try:
        alive = subprocess.run([sys.executable, *check[1:]], env=env, capture_output=True, check=False)
    finally:
        server.stop()
    dead = subprocess.run([sys.executable, *check[1:]], env=env, capture_output=True, check=False)
    assert alive.returncode == 0 and dead.returncode != 0
    exposed = runtime.last("EXPOSE").split()
    assert runtime.env()["SCORER_METRICS_PORT"] in exposed and str(Settings().http_port) in exposed
    assert str(Settings().console_port) in exposed


def test_the_image_bakes_in_a_default_model_that_loads(tmp_path: Path) -> None:
    runtime = stages(DEPLOY / "Dockerfile")[-1]
    workdir = runtime.last("WORKDIR")
    app = materialise(ROOT, context(ROOT, DEPLOY / "Dockerfile.dockerignore"), runtime, tmp_path)
    env = runtime.env()
    model = OnnxModel(app / Path(env["SCORER_MODEL"]).relative_to(workdir))
    registry = Registry(app / Path(env["SCORER_REGISTRY"]).relative_to(workdir))
    assert model.label in {e.label for e in registry.entries()}


def test_the_image_is_slim_runs_as_the_user_it_creates_and_carries_the_package_version() -> None:
    build_stage, runtime = stages(DEPLOY / "Dockerfile")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == __version__
    assert runtime.last("ARG") == f"VERSION={__version__}"
    assert build_stage.image == runtime.image == "python:3.11-slim-bookworm"
    user = runtime.last("USER")
    assert user.isdigit() and int(user) > 0
    assert re.search(rf"useradd .*--uid {user}\b", " ".join(runtime.all("RUN")))
    copies = [args.split() for args in runtime.all("COPY") if "--from" not in args]
    assert copies and all(words[0].startswith(f"--chown={user}:") for words in copies)


def test_the_train_extra_is_a_build_argument_that_defaults_to_none() -> None:
    # scorer retrain needs LightGBM (the train extra) and its OpenMP runtime: the same Dockerfile builds that
    # image with --build-arg EXTRAS=train, and without it the steps are no-ops, so the scorer image stays as
    # the tests above check it
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "train" in extras
    for stage in stages(DEPLOY / "Dockerfile"):
        assert 'EXTRAS=""' in stage.all("ARG")
        uses = [run for run in stage.all("RUN") if "$EXTRAS" in run]
        assert len(uses) == 1 and uses[0].startswith('if [ -n "$EXTRAS" ]; then '), uses
    install = stages(DEPLOY / "Dockerfile")[-1].all("RUN")
    assert "libgomp1" in next(run for run in install if "$EXTRAS" in run)


def retrain_cli(args: list[str]) -> None:
    """The CLI must take args, once it has a retrain command (it comes with the retraining itself)."""
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
    if "retrain" in commands.choices:
        parser.parse_args(args)  # exits on an unknown flag


# -- compose -----------------------------------------------------------------------------------------------


def compose_config(**environ: str) -> dict[str, Any]:
    """The services as `docker-compose config` resolves them, with `environ` (and no POSTGRES_PASSWORD else)."""
    exe = tool("docker-compose", "apt-get install docker-compose")
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"} | environ
    done = subprocess.run(
        [exe, "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout)["services"])


def test_compose_file_is_accepted_by_docker_compose() -> None:
    resolved = compose_config()
    assert {
        "kafka",
        "topics",
        "aggregator",
        "scorer",
        "monitor",
        "serve",
        "simulator",
        "postgres",
        "store",
        "console",
        "retrain",
        "prometheus",
        "grafana",
    } <= set(resolved)
    assert resolved["kafka"]["image"].startswith("apache/kafka:")
    assert (
        resolved["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    )  # KRaft, no ZooKeeper
    assert resolved["scorer"]["deploy"]["replicas"] == 2
    assert resolved["scorer"]["build"]["args"]["VERSION"] == __version__
    assert resolved["scorer"]["image"] == f"scorer:{__version__}"
    assert resolved["topics"]["command"] == ["topics", "--partitions", "4"]
    assert resolved["serve"]["command"] == ["serve"]
    assert resolved["serve"]["ports"][0]["target"] == 8080
    for name in ("aggregator", "scorer", "monitor", "serve", "simulator", "store", "console", "retrain"):
        assert resolved[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_compose_runs_the_store_on_a_postgresql_of_its_own() -> None:
    resolved = compose_config()
    postgres, store = resolved["postgres"], resolved["store"]
    image, _, version = postgres["image"].partition(":")
    assert image == "postgres" and int(version.split(".")[0]) >= 14 and "." in version  # pinned to a minor
    assert (
        postgres["healthcheck"]["test"][0] == "CMD-SHELL"
        and "pg_isready" in postgres["healthcheck"]["test"][1]
    )
    ((source, target, *_),) = [v.split(":") for v in postgres["volumes"]]  # docker-compose 1.29: short syntax
    assert target == "/var/lib/postgresql/data"
    assert source in yaml.safe_load((DEPLOY / "compose.yaml").read_text())["volumes"]  # a named volume
    assert "ports" not in postgres  # the local stack's database is not on the host's network
    assert store["command"] == ["store"]
    assert store["depends_on"]["postgres"]["condition"] == "service_healthy"
    url = urlsplit(store["environment"]["SCORER_DATABASE_URL"])
    env = postgres["environment"]
    assert (url.hostname, url.port, url.path) == ("postgres", 5432, f"/{env['POSTGRES_DB']}")
    assert (url.username, url.password) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
    assert env["POSTGRES_PASSWORD"] == LOCAL_STACK_PASSWORD  # the default, named for what it is
    assert load_settings(environ={"SCORER_DATABASE_URL": url.geturl()}).database_url == url.geturl()
    chosen = compose_config(POSTGRES_PASSWORD=CHOSEN_PASSWORD)  # the environment, or deploy/.env
    assert chosen["postgres"]["environment"]["POSTGRES_PASSWORD"] == CHOSEN_PASSWORD
    assert urlsplit(chosen["store"]["environment"]["SCORER_DATABASE_URL"]).password == CHOSEN_PASSWORD


def published(port: str | dict[str, Any]) -> tuple[str | None, int, int]:
    """(host address or None for every address, published port, container port) of a resolved ports entry."""
    if isinstance(port, dict):  # docker-compose 1.29 resolves a port without an address to the long form
        return port.get("host_ip"), int(port["published"]), int(port["target"])
    *address, host_port, container = port.split("/")[0].split(":")
    return (address[0] if address else None), int(host_port), int(container)


def test_compose_runs_the_console_on_the_stores_database_published_on_loopback_only() -> None:
    resolved = compose_config()
    console, store = resolved["console"], resolved["store"]
    assert console["command"] == ["console"]
    settings = load_settings(environ=console["environment"])
    assert settings.database_url == store["environment"]["SCORER_DATABASE_URL"]
    assert settings.console_label_time == "event"  # the simulator's event time is not the clock
    (port,) = console["ports"]
    assert published(port) == ("127.0.0.1", settings.console_port, settings.console_port)
    assert all(published(p)[0] is None for p in resolved["serve"]["ports"])  # the parser tells them apart
    assert console["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert console["depends_on"]["store"]["condition"] == "service_started"
    assert (
        "healthcheck" not in console
    )  # the image's HEALTHCHECK: /healthz on the metrics port, as the others
    jobs = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    ((target,),) = [j["dns_sd_configs"] for j in jobs if j["job_name"] == "scorer-console"]
    assert target["names"] == ["console"] and target["port"] == settings.metrics_port
    chosen = compose_config(POSTGRES_PASSWORD=CHOSEN_PASSWORD)
    assert urlsplit(chosen["console"]["environment"]["SCORER_DATABASE_URL"]).password == CHOSEN_PASSWORD


def test_compose_retrains_every_week_on_the_stores_database_from_the_train_image() -> None:
    resolved = compose_config()
    retrain, store = resolved["retrain"], resolved["store"]
    assert retrain["command"] == [
        "retrain",
        "--every",
        "7d",
    ]  # a long-running process: it sleeps between cycles
    retrain_cli(retrain["command"])
    settings = load_settings(environ=retrain["environment"])
    assert settings.database_url == store["environment"]["SCORER_DATABASE_URL"]
    assert settings.brokers == load_settings(environ=store["environment"]).brokers
    # its own image, the same Dockerfile with the train extra; the scorers' image keeps none
    assert retrain["build"]["args"] == {"VERSION": __version__, "EXTRAS": "train"}
    assert retrain["image"] == f"scorer-train:{__version__}"
    assert "EXTRAS" not in store["build"]["args"] and store["image"] == f"scorer:{__version__}"
    assert "ports" not in retrain  # only Prometheus, on the stack's network, reads its metrics
    assert retrain["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert retrain["depends_on"]["store"]["condition"] == "service_started"  # the store migrates first
    jobs = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    ((target,),) = [j["dns_sd_configs"] for j in jobs if j["job_name"] == RETRAIN]
    assert target["names"] == ["retrain"] and target["port"] == settings.metrics_port
    chosen = compose_config(POSTGRES_PASSWORD=CHOSEN_PASSWORD)
    assert urlsplit(chosen["retrain"]["environment"]["SCORER_DATABASE_URL"]).password == CHOSEN_PASSWORD


def test_prometheus_config_and_grafana_provisioning() -> None:
    done = subprocess.run(
        [tool("promtool", "apt-get install prometheus"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = {
        j["job_name"]
        for j in yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    }
    assert jobs == LONG_RUNNING | {RETRAIN}  # the job names the alert rules use, and the retraining's
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for mount in compose["services"]["grafana"]["volumes"] + compose["services"]["prometheus"]["volumes"]:
        assert (DEPLOY / mount.split(":")[0]).exists(), mount
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/scorer.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


# -- Kubernetes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_every_built_in_resource_passes_the_kubernetes_schema(
    overlay: str, base: Any, production: Any
) -> None:
    resources = base if overlay == "base" else production
    builtin = [r for r in resources if r["apiVersion"] in BUILTIN_GROUPS]
    assert len(builtin) >= 9
    for r in builtin:
        kubernetes_validate.validate(r, K8S_VERSION, strict=True)


def test_deployments_have_probes_resources_and_a_grace_period(base: list[dict[str, Any]]) -> None:
    deployments = {r["metadata"]["name"]: r for r in base if r["kind"] == "Deployment"}
    assert set(deployments) == LONG_RUNNING
    for name, d in deployments.items():
        pod = d["spec"]["template"]["spec"]
        c = containers(d)[0]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert "cpu" in c["resources"]["requests"] and "memory" in c["resources"]["limits"], name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
        if name != "scorer-monitor":  # the monitor commits nothing
            assert pod["terminationGracePeriodSeconds"] > ACK_TIMEOUT_S, name  # a final commit's longest wait
    assert deployments["scorer-monitor"]["spec"]["strategy"]["type"] == "Recreate"  # never two monitors


def test_keda_scales_the_scorers_on_lag_capped_at_the_partitions(base: list[dict[str, Any]]) -> None:
    scaled = find(base, "ScaledObject", "scorer")
    job = find(base, "Job", "scorer-topics")
    config = find(base, "ConfigMap", "scorer-config")["data"]
    args = containers_of_job(job)[0]["args"]
    partitions = int(args[args.index("--partitions") + 1])
    assert scaled["spec"]["scaleTargetRef"]["name"] == "scorer"
    assert scaled["spec"]["maxReplicaCount"] == partitions
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == config["SCORER_GROUP"]
    assert trigger["metadata"]["topic"] == config["SCORER_INPUT_TOPIC"]
    assert trigger["metadata"]["bootstrapServers"] == config["SCORER_BROKERS"]
    assert int(trigger["metadata"]["lagThreshold"]) > 0


def containers_of_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job["spec"]["template"]["spec"]["containers"])


def test_metrics_services_pdb_and_servicemonitor(base: list[dict[str, Any]]) -> None:
    services = {r["metadata"]["name"]: r for r in base if r["kind"] == "Service"}
    assert set(services) == LONG_RUNNING  # Service names = Prometheus job names = the alert rules' jobs
    monitor = find(base, "ServiceMonitor", "scorer")
    selector = monitor["spec"]["selector"]["matchLabels"]
    for s in services.values():
        assert selector.items() <= s["metadata"]["labels"].items()
        assert s["spec"]["ports"][0]["name"] == monitor["spec"]["endpoints"][0]["port"]
    pdb = find(base, "PodDisruptionBudget", "scorer")
    assert (
        pdb["spec"]["selector"]["matchLabels"]
        == find(base, "Deployment", "scorer")["spec"]["selector"]["matchLabels"]
    )


def test_the_store_reads_its_database_url_from_a_secret_it_may_read(base: list[dict[str, Any]]) -> None:
    store = find(base, "Deployment", "scorer-store")
    pod = store["spec"]["template"]["spec"]
    (c,) = containers(store)
    assert c["args"] == ["store"]
    config = find(base, "ConfigMap", "scorer-config")["data"]
    assert not [k for k in config if k.startswith("SCORER_DATABASE_URL")]  # the password is not configuration
    path = Path({e["name"]: e["value"] for e in c["env"]}["SCORER_DATABASE_URL_FILE"])
    mount = {m["mountPath"]: m for m in c["volumeMounts"]}[str(path.parent)]
    assert mount["readOnly"] and "subPath" not in mount
    secret = {v["name"]: v for v in pod["volumes"]}[mount["name"]]["secret"]
    # a Secret's files belong to root: the store's user reads them as a member of the pod's fsGroup
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    assert secret["defaultMode"] & 0o040 and not secret["defaultMode"] & 0o007
    example = yaml.safe_load((DEPLOY / "k8s" / "base" / "store-database.example.yaml").read_text())
    assert example["metadata"]["name"] == secret["secretName"] and path.name in example["stringData"]
    url = example["stringData"]["url"]
    query = parse_qs(urlsplit(url).query)
    root_cert = Path(query["sslrootcert"][0])  # the CA, from the same Secret
    assert query["sslmode"] == ["verify-full"] and root_cert.parent == path.parent
    assert root_cert.name in example["stringData"]
    assert load_settings(environ={"SCORER_DATABASE_URL": url}).database_url == url


def test_the_example_manifests_are_valid_and_the_migration_job_reads_the_stores_secret_path(
    base: list[dict[str, Any]],
) -> None:
    examples = sorted((DEPLOY / "k8s").rglob("*.example.yaml"))
    assert {p.name for p in examples} >= {
        "store-database.example.yaml",
        "store-migrate-job.example.yaml",
        "console-ingress.example.yaml",
        "retrain-deployment.example.yaml",
    }
    for path in examples:
        kustomization = yaml.safe_load((path.parent / "kustomization.yaml").read_text())
        assert path.name not in kustomization["resources"]  # created apart, as each file says
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    job = yaml.safe_load((DEPLOY / "k8s" / "base" / "store-migrate-job.example.yaml").read_text())
    (c,) = containers(job)
    assert build_parser().parse_args(c["args"]).migrate and c["image"] == f"scorer:{__version__}"
    (store,) = containers(find(base, "Deployment", "scorer-store"))
    env = {e["name"]: e["value"] for e in c["env"]}
    assert (
        env["SCORER_DATABASE_URL_FILE"]
        == {e["name"]: e["value"] for e in store["env"]}["SCORER_DATABASE_URL_FILE"]
    )
    assert {m["mountPath"] for m in c["volumeMounts"]} == {str(Path(env["SCORER_DATABASE_URL_FILE"]).parent)}
    secrets = [v["secret"]["secretName"] for r in (job, find(base, "Deployment", "scorer-store"))
               for v in r["spec"]["template"]["spec"]["volumes"] if "secret" in v]  # fmt: skip
    assert secrets == ["scorer-database", "scorer-database"]  # the same user: the tables' owner


def test_the_console_runs_on_the_stores_secret_behind_its_ingress_and_network_policy(
    base: list[dict[str, Any]], tmp_path: Path
) -> None:
    console, store = find(base, "Deployment", "scorer-console"), find(base, "Deployment", "scorer-store")
    assert 1 <= console["spec"]["replicas"] <= 2  # stateless: sessions and throttling live in PostgreSQL
    pod = console["spec"]["template"]["spec"]
    (c,) = containers(console)
    assert c["args"] == ["console"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert c[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    # the store's database URL, from the store's Secret at the store's path (the same user: the tables' owner)
    env = {e["name"]: e["value"] for e in c["env"]}
    (store_c,) = containers(store)
    url_file = {e["name"]: e["value"] for e in store_c["env"]}["SCORER_DATABASE_URL_FILE"]
    assert env["SCORER_DATABASE_URL_FILE"] == url_file
    mount = {m["mountPath"]: m for m in c["volumeMounts"]}[str(Path(url_file).parent)]
    assert mount["readOnly"] and "subPath" not in mount
    secret = {v["name"]: v for v in pod["volumes"]}[mount["name"]]["secret"]
    (store_secret,) = [v["secret"] for v in store["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert secret == store_secret
    assert pod["securityContext"] == store["spec"]["template"]["spec"]["securityContext"]  # fsGroup included
    assert c["securityContext"] == store_c["securityContext"]
    # its settings as the pod sees them: the URL read from the file, the port it binds, Secure cookies
    config = find(base, "ConfigMap", "scorer-config")["data"]
    url = tmp_path / "url"
    url.write_text("postgresql://scorer_store:not-logged@db.example.internal:5432/fraud\n")
    settings = load_settings(environ=config | env | {"SCORER_DATABASE_URL_FILE": str(url)})
    assert settings.database_url == url.read_text().strip()
    assert (settings.console_port, settings.metrics_port) == (ports["http"], ports["metrics"])
    assert settings.console_secure_cookies is True  # TLS ends at the Ingress
    service = find(base, "Service", "scorer-console")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "metrics": (9108, "metrics"),
        "http": (8090, "http"),
    }
    pod_labels = console["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # who may reach it: the pages from the ingress controller's namespace only, the metrics from the cluster
    policy = find(base, "NetworkPolicy", "scorer-console")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}
    assert set(by_port) == {"http", "metrics"} and by_port["metrics"] is None
    (source,) = by_port["http"]
    assert set(source) == {"namespaceSelector"} and source["namespaceSelector"]["matchLabels"]
    ingress = yaml.safe_load((DEPLOY / "k8s" / "base" / "console-ingress.example.yaml").read_text())
    (rule,) = ingress["spec"]["rules"]
    (backend,) = [p["backend"]["service"] for p in rule["http"]["paths"]]
    assert backend == {"name": "scorer-console", "port": {"name": "http"}}
    (tls,) = ingress["spec"]["tls"]
    assert rule["host"] in tls["hosts"] and tls["secretName"]


def test_the_retraining_cronjob_runs_once_a_week_alone_on_the_stores_secret(
    base: list[dict[str, Any]], tmp_path: Path
) -> None:
    cron, store = find(base, "CronJob", RETRAIN), find(base, "Deployment", "scorer-store")
    spec = cron["spec"]
    _, _, day_of_month, month, day_of_week = spec["schedule"].split()
    assert (day_of_month, month) == ("*", "*") and day_of_week.isdigit()  # once a week
    assert spec["concurrencyPolicy"] == "Forbid"  # never two runs (the database lock is the other guard)
    job = spec["jobTemplate"]["spec"]
    assert 0 <= job["backoffLimit"] <= 2 and 0 < job["activeDeadlineSeconds"] <= 6 * 3600
    assert job.get("parallelism", 1) == 1 and job.get("completions", 1) == 1
    pod = job["template"]["spec"]
    assert job["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == RETRAIN
    (c,) = pod["containers"]
    assert c["args"][:2] == ["retrain", "--once"] and "--every" not in c["args"]
    retrain_cli(c["args"])
    assert c["image"] == f"scorer-train:{__version__}"  # the image with the train extra
    assert {containers(d)[0]["image"] for d in base if d["kind"] == "Deployment"} == {f"scorer:{__version__}"}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    workdir = c["args"][c["args"].index("--workdir") + 1]
    assert "emptyDir" in volumes[mounts[workdir]["name"]]  # the root filesystem is read-only
    # the store's database URL, from the store's Secret at the store's path, as the console reads it
    (store_c,) = containers(store)
    url_file = {e["name"]: e["value"] for e in store_c["env"]}["SCORER_DATABASE_URL_FILE"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["SCORER_DATABASE_URL_FILE"] == url_file
    mount = mounts[str(Path(url_file).parent)]
    assert mount["readOnly"] and "subPath" not in mount
    (store_secret,) = [v["secret"] for v in store["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert volumes[mount["name"]]["secret"] == store_secret
    assert c["envFrom"] == store_c["envFrom"]  # the scorers' Kafka settings
    # resources, and the store's non-root security context (its fsGroup reads the Secret)
    assert "cpu" in c["resources"]["requests"] and "memory" in c["resources"]["limits"]
    assert pod["securityContext"] == store["spec"]["template"]["spec"]["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"] == store_c["securityContext"]
    assert pod["restartPolicy"] == "Never"  # a failed run's pod stays for its logs
    config = find(base, "ConfigMap", "scorer-config")["data"]
    url = tmp_path / "url"
    url.write_text("postgresql://scorer_store:not-logged@db.example.internal:5432/fraud\n")
    settings = load_settings(environ=config | env | {"SCORER_DATABASE_URL_FILE": str(url)})
    assert settings.database_url == url.read_text().strip()
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": settings.metrics_port}
    # it serves its metrics port and nothing else
    policy = find(base, "NetworkPolicy", RETRAIN)
    assert (
        policy["spec"]["podSelector"]["matchLabels"].items() <= job["template"]["metadata"]["labels"].items()
    )
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "metrics"}]}]


def test_the_retraining_deployment_example_probes_and_exposes_its_metrics_like_the_store(
    base: list[dict[str, Any]],
) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "base" / "retrain-deployment.example.yaml").read_text()))
    deployment = find(docs, "Deployment", RETRAIN)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    (c,) = containers(deployment)
    assert c["args"][:3] == ["retrain", "--every", "7d"]
    retrain_cli(c["args"])
    (store_c,) = containers(find(base, "Deployment", "scorer-store"))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == store_c[probe]["httpGet"], probe
    (cron_c,) = find(base, "CronJob", RETRAIN)["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert (c["env"], c["envFrom"], c["volumeMounts"]) == (
        cron_c["env"],
        cron_c["envFrom"],
        cron_c["volumeMounts"],
    )
    assert c["image"] == cron_c["image"]  # the base pins scorer-train to the package version
    service = find(docs, "Service", RETRAIN)
    monitor = find(base, "ServiceMonitor", "scorer")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["name"] == monitor["spec"]["endpoints"][0]["port"] == "metrics"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    policy = find(base, "NetworkPolicy", RETRAIN)
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()


def test_production_overlay_wires_sasl_ssl_from_a_secret(production: list[dict[str, Any]]) -> None:
    config = find(production, "ConfigMap", "scorer-config")["data"]
    assert config["SCORER_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["SCORER_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert "SCORER_KAFKA_SASL_PASSWORD" not in config  # only the _FILE form: the password lives in the Secret
    mount_dir = str(Path(config["SCORER_KAFKA_SASL_PASSWORD_FILE"]).parent)
    for r in production:
        if r["kind"] in ("Deployment", "Job"):
            c = containers(r)[0]
            assert c["image"] == f"registry.example.com/payments/scorer:{__version__}"
            assert r["metadata"]["namespace"] == "fraud"
            mounts = {m["name"]: m for m in c["volumeMounts"]}
            assert (
                mounts["kafka-credentials"]["mountPath"] == mount_dir
                and mounts["kafka-credentials"]["readOnly"]
            )
            volumes = {v["name"]: v for v in r["spec"]["template"]["spec"]["volumes"]}
            assert volumes["kafka-credentials"]["secret"]["secretName"] == "kafka-credentials"
    (trigger,) = find(production, "ScaledObject", "scorer")["spec"]["triggers"]
    assert (
        trigger["authenticationRef"]["name"]
        == find(production, "TriggerAuthentication", "kafka-scram")["metadata"]["name"]
    )
    assert trigger["metadata"]["bootstrapServers"] == config["SCORER_BROKERS"]


def test_production_overlay_gives_the_retraining_its_image_and_the_kafka_secret(
    production: list[dict[str, Any]],
) -> None:
    cron = find(production, "CronJob", RETRAIN)
    assert cron["metadata"]["namespace"] == "fraud"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == f"registry.example.com/payments/scorer-train:{__version__}"
    config = find(production, "ConfigMap", "scorer-config")["data"]
    mount = {m["name"]: m for m in c["volumeMounts"]}["kafka-credentials"]
    assert (
        mount["mountPath"] == str(Path(config["SCORER_KAFKA_SASL_PASSWORD_FILE"]).parent)
        and mount["readOnly"]
    )
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kafka-credentials"]["secret"]["secretName"] == "kafka-credentials"
    assert "database" in volumes  # the patch adds to the base's volumes, it does not replace them


# -- configuration names cannot drift ----------------------------------------------------------------------


def scorer_variables() -> Iterator[tuple[str, str, str]]:
    """(file, name, value) of every SCORER_* variable the deploy files set."""
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            yield from ((str(path.relative_to(ROOT)), k, v) for k, v in _variables(doc))


def _variables(node: Any) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and node["name"].startswith(ENV_PREFIX) and "value" in node:
            yield node["name"], str(node["value"])
        for key, value in node.items():
            if isinstance(key, str) and key.startswith(ENV_PREFIX) and not isinstance(value, dict | list):
                yield key, str(value)
            else:
                yield from _variables(value)
    elif isinstance(node, list):
        for item in node:
            yield from _variables(item)


def test_every_scorer_variable_in_deploy_is_a_setting(tmp_path: Path) -> None:
    found = list(scorer_variables())
    assert len({name for _, name, _ in found}) >= 15
    secret, url = tmp_path / "password", tmp_path / "url"
    secret.write_text("not-logged\n")
    url.write_text(
        "postgresql://scorer_store:not-logged@db.example.internal:5432/fraud?sslmode=verify-full\n"
    )
    for _, name, value in found:
        if name.endswith("_FILE"):  # the mounted path does not exist here: a file with a value of the kind
            value = str(url if name == "SCORER_DATABASE_URL_FILE" else secret)
        from_env({name: value})  # raises ConfigError for an unknown name
        load_settings(environ={name: value})  # and for a value of the wrong type
    baked = re.findall(r"\b(SCORER_[A-Z_]+)=(\S+)", (DEPLOY / "Dockerfile").read_text())
    assert {name for name, _ in baked} == {"SCORER_MODEL", "SCORER_REGISTRY", "SCORER_METRICS_PORT"}
    for name, value in baked:
        load_settings(environ={name: value})
