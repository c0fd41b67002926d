"""The cluster recipes in cluster/: every manifest parses, and what must agree between them does.

Nothing here needs Docker, Kubernetes or a cloud account: the files are parsed (yaml.safe_load, Dockerfile lines) and
checked field by field, the `ray up` config against Ray's own schema.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from sweep_platform import placement
from sweep_platform.sweep_file import load_sweep

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
AWS = CLUSTER / "aws-gpu.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob-sweep.yaml"
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"
COMPOSE = CLUSTER / "mlflow" / "docker-compose.yaml"
IMAGE_NAME = "binsweep"


# ------------------------------------------------------------------------------------------------------- helpers
def _pin(package: str) -> str:
    """The exact version pyproject.toml pins for a package (`name[extras]==X`)."""
    text = (REPO / "pyproject.toml").read_text()
    m = re.search(rf'"{re.escape(package)}(?:\[[^\]]*\])?==([0-9][^"]*)"', text)
    assert m, f"pyproject.toml pins no {package}=="
    return m.group(1)


def _project_version() -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert m
    return m.group(1)


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def _raycluster() -> dict:
    docs = [d for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d]
    (rc,) = [d for d in docs if d["kind"] == "RayCluster"]
    return rc


def _pvcs() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d]
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}


def _groups(spec: dict):
    """(name, group spec, is_head) for the head and every worker group of a RayCluster spec."""
    yield "head", spec["headGroupSpec"], True
    for g in spec.get("workerGroupSpecs", []):
        yield g["groupName"], g, False


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, continuation lines joined."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def _our_images() -> dict[str, str]:
    """Every reference to the binsweep image, by where it appears."""
    refs = {"aws-gpu.yaml docker.image": _load(AWS)["docker"]["image"]}
    for fname, spec in (("raycluster.yaml", _raycluster()["spec"]),
                        ("rayjob-sweep.yaml", _load(RAYJOB)["spec"]["rayClusterSpec"])):
        for gname, group, _ in _groups(spec):
            for c in _containers(group):
                refs[f"{fname} {gname}/{c['name']}"] = c["image"]
    pattern = re.compile(rf"[\w.\-/]+/{IMAGE_NAME}:[\w.\-]+")
    for doc in (CLUSTER / "README.md", DOCKERFILE):
        for i, m in enumerate(pattern.findall(doc.read_text())):
            refs[f"{doc.relative_to(REPO)} #{i}"] = m
    return refs


# ------------------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("path", [AWS, RAYJOB, COMPOSE], ids=lambda p: p.name)
def test_yaml_manifests_parse(path):
    assert isinstance(_load(path), dict)


def test_raycluster_file_holds_the_cluster_and_its_volume():
    kinds = [d["kind"] for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d]
    assert sorted(kinds) == ["PersistentVolumeClaim", "RayCluster"]


def test_dockerfile_parses_into_instructions():
    instrs = [i for i, _ in _dockerfile()]
    assert "FROM" in instrs and "RUN" in instrs and "USER" in instrs
    assert set(instrs) <= {"ARG", "FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "CMD", "LABEL"}


# ------------------------------------------------------------------------------------------ image and versions
def test_one_image_tag_everywhere_and_it_names_the_pins():
    refs = _our_images()
    assert len(refs) >= 8, refs
    assert len(set(refs.values())) == 1, f"image references differ: {refs}"
    tag = next(iter(refs.values())).rsplit(":", 1)[1]
    assert tag.startswith(f"{_project_version()}-ray{_pin('ray')}-"), tag


def test_ray_version_is_the_pinned_one_everywhere():
    ray = _pin("ray")
    assert ray == "2.60.0"
    assert _raycluster()["spec"]["rayVersion"] == ray
    assert _load(RAYJOB)["spec"]["rayClusterSpec"]["rayVersion"] == ray
    # the image build fails unless pip resolved the same Ray
    assert f"ray.__version__ == '{ray}'" in DOCKERFILE.read_text()


def test_dockerfile_builds_the_project_on_a_cuda13_base_as_non_root():
    instrs = _dockerfile()
    args = dict(re.match(r"(\w+)=(\S+)", a).groups() for i, a in instrs if i == "ARG" and "=" in a)
    base = next(a for i, a in instrs if i == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    # torch 2.11 from PyPI is a CUDA 13.0 build: the base must be CUDA 13.0
    assert base.startswith("nvidia/cuda:13.0"), base
    runs = " ".join(a for i, a in instrs if i == "RUN")
    assert "python3.11" in runs and "pip install ." in runs
    copied = [shlex.split(a)[:-1] for i, a in instrs if i == "COPY"]
    sources = {s for srcs in copied for s in srcs}
    assert {"pyproject.toml", "sweep_platform", "trainables", "search_spaces"} <= sources
    for s in sources:
        assert (REPO / s).exists(), f"COPY {s}: not in the repository"
    users = [a for i, a in instrs if i == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    ignore = (CLUSTER / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "data", "runs"} <= set(ignore)


# ------------------------------------------------------------------------------------------------------ ray up
def test_ray_up_config_passes_rays_schema():
    from ray.autoscaler._private.util import validate_config

    validate_config(_load(AWS))


def _json_flag(command: str, flag: str) -> dict:
    m = re.search(rf"{flag}='([^']*)'", command)
    assert m, f"{flag} missing in: {command}"
    return json.loads(m.group(1))


def test_ray_up_head_is_a_cpu_node_that_holds_the_sweep_drivers():
    cfg = _load(AWS)
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"]["GPU"] == 0
    assert head["resources"]["sweep_driver"] >= 1
    start = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in start and "--num-gpus=0" in start
    assert "--dashboard-host=" in start
    custom = {k: v for k, v in head["resources"].items() if k not in ("CPU", "GPU")}
    assert _json_flag(start, "--resources") == custom == placement.head_resources()  # what the embedded head offers
    assert "InstanceMarketOptions" not in head["node_config"], "the sweep drivers' node must not be spot"


def test_ray_up_gpu_workers_autoscale_and_offer_no_driver_slot():
    cfg = _load(AWS)
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1}
    assert gpu, "no GPU worker type"
    for name, t in gpu.items():
        assert t["min_workers"] == 0 and t["max_workers"] >= 1, name
        assert "sweep_driver" not in t["resources"], name
    assert cfg["max_workers"] >= max(t["max_workers"] for t in gpu.values())
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(cfg["worker_start_ray_commands"])


def test_ray_up_environment_and_token_reach_every_node():
    cfg = _load(AWS)
    setup = " ".join(cfg["setup_commands"])
    assert "RAY_AUTH_MODE=token" in setup
    assert re.search(r"MLFLOW_TRACKING_URI=https?://", setup)
    assert "BINSWEEP_RAY_STORAGE=s3://" in setup
    # node-local homes: relative datasets (bast_tpe.yaml's data/loc) live in the bucket, where every node reads them
    assert "BINSWEEP_DATA_ROOT=s3://" in setup
    env_file = re.search(r"> (\S+)", setup).group(1)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert f". {env_file}" in " ".join(cfg[key]), f"{key} does not load {env_file}"
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    assert cfg["docker"]["image"]


# ------------------------------------------------------------------------------------------------------ KubeRay
def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_raycluster_head_has_no_gpu_and_the_driver_resource():
    spec = _raycluster()["spec"]
    head = spec["headGroupSpec"]
    assert spec["authOptions"]["mode"] == "token"
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert float(head["resources"]["sweep_driver"]) >= 1
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)
    for c in _containers(head):
        assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {})


def test_raycluster_gpu_group_requests_gpus_and_autoscales():
    spec = _raycluster()["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    workers = spec["workerGroupSpecs"]
    assert workers
    for g in workers:
        assert 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"] and g["maxReplicas"] >= 1
        assert "sweep_driver" not in g.get("resources", {})
        for c in _containers(g):
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1, g["groupName"]


def test_raycluster_pods_share_a_rwx_volume_and_the_tracking_environment():
    spec = _raycluster()["spec"]
    pvcs = _pvcs()
    for gname, group, _ in _groups(spec):
        pod = group["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        for c in pod["containers"]:
            env = _env(c)
            assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]["name"], gname
            storage = env["BINSWEEP_RAY_STORAGE"]["value"]
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            mount = next(p for p in mounts if storage.startswith(p.rstrip("/") + "/"))
            claim = claims[mounts[mount]]
            assert "ReadWriteMany" in pvcs[claim]["spec"]["accessModes"], claim


def test_rayjob_runs_the_sweep_command_on_the_driver_node():
    job = _load(RAYJOB)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "-m", "sweep_platform", "sweep"], argv
    assert (REPO / argv[4]).is_file(), argv[4]
    assert spec["entrypointNumCpus"] == 1
    assert isinstance(spec["entrypointResources"], str)  # the CRD field is a JSON string
    wanted = json.loads(spec["entrypointResources"])
    assert wanted == {"sweep_driver": 1}
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert float(head["resources"]["sweep_driver"]) >= wanted["sweep_driver"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True and isinstance(spec["ttlSecondsAfterFinished"], int)
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert all(isinstance(v, str) for v in runtime_env["env_vars"].values())
    assert not any(re.search(r"PASSWORD|SECRET|TOKEN", k) for k in runtime_env["env_vars"])


def test_rayjob_cluster_is_the_raycluster():
    assert _load(RAYJOB)["spec"]["rayClusterSpec"] == _raycluster()["spec"]


def test_readme_submits_like_the_rayjob():
    text = (CLUSTER / "README.md").read_text()
    assert "--entrypoint-resources '{\"sweep_driver\": 1}'" in text
    assert "python -m sweep_platform sweep search_spaces/" in text


# ------------------------------------------------------------------------------------------------------- MLflow
def test_mlflow_server_recipe():
    compose = _load(COMPOSE)
    svc = compose["services"]["mlflow"]
    assert f"mlflow[auth]=={_pin('mlflow')}" in svc["build"]["dockerfile_inline"]
    command = " ".join(svc["command"])
    assert "--app-name basic-auth" in command and "--allowed-hosts" in command
    assert svc["environment"]["MLFLOW_ARTIFACTS_DESTINATION"]
    for ports in (s.get("ports", []) for s in compose["services"].values()):
        for p in ports:
            assert str(p).startswith("127.0.0.1:"), p
    for name, s in compose["services"].items():
        for key, value in (s.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET", key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), (name, key)
    for sec in compose["secrets"].values():
        assert sec["file"].startswith("${MLFLOW_SECRETS_DIR"), sec


# ------------------------------------------------------------------------------------------------------ secrets
_URI_CREDS = re.compile(r"[a-z][a-z0-9+.\-]*://[^/\s:@'\"]+:([^@\s/'\"]+)@")
_ASSIGN = re.compile(r"(?<![{$])\b[A-Z0-9_]*(?:PASSWORD|SECRET|TOKEN|SECRET_KEY|ACCESS_KEY|API_KEY)\b\s*[:=]\s*(\S+)")
_ALLOWED_VALUES = re.compile(r"""^["']?(\$|<|\.\.\.|/run/secrets/|\{|\(|$)""")


def _text_files():
    for p in sorted(CLUSTER.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            yield p
    yield REPO / ".rayignore"


def test_no_plaintext_secrets_in_any_manifest():
    problems = []
    for path in _text_files():
        text = path.read_text()
        rel = path.relative_to(REPO)
        for m in _URI_CREDS.finditer(text):
            if m.group(1) not in ("***",) and not m.group(1).startswith(("$", "<")):
                problems.append(f"{rel}: credentials in a URI: {m.group(0)}")
        for m in _ASSIGN.finditer(text):
            if not _ALLOWED_VALUES.match(m.group(1)):
                problems.append(f"{rel}: literal secret: {m.group(0)}")
        if re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY", text):
            problems.append(f"{rel}: a cloud key or private key")
    # Kubernetes: a secret-looking variable must come from a Secret, never a literal value
    for fname, spec in (("raycluster", _raycluster()["spec"]), ("rayjob", _load(RAYJOB)["spec"]["rayClusterSpec"])):
        for gname, group, _ in _groups(spec):
            for c in _containers(group):
                for name, e in _env(c).items():
                    if re.search(r"PASSWORD|SECRET|TOKEN|USERNAME", name):
                        if "value" in e or "secretKeyRef" not in e.get("valueFrom", {}):
                            problems.append(f"{fname} {gname}: {name} is not from a Secret")
    for instr, args in _dockerfile():
        if instr in ("ENV", "ARG") and re.search(r"PASSWORD|SECRET|TOKEN|_KEY\b", args):
            problems.append(f"Dockerfile: {instr} {args}")
    assert not problems, "\n".join(problems)


def test_the_secret_scan_catches_what_it_should():
    assert _URI_CREDS.search("postgresql://mlflow:hunter2@db/mlflow")
    assert not _ALLOWED_VALUES.match(_ASSIGN.search("MLFLOW_TRACKING_PASSWORD=hunter2").group(1))
    assert _ALLOWED_VALUES.match(_ASSIGN.search('MLFLOW_AUTH_ADMIN_PASSWORD="$$(cat /run/secrets/x)"').group(1))
    assert not _ASSIGN.search('[ -n "${RAY_AUTH_TOKEN:-}" ]')  # an expansion, not an assignment


# ------------------------------------------------------------------------------------------------ local scripts
LOCAL = CLUSTER / "local"


@pytest.mark.parametrize("name", ["start.sh", "stop.sh", "_common.sh"])
def test_local_scripts_are_strict_bash(name):
    path = LOCAL / name
    subprocess.run(["bash", "-n", str(path)], check=True)
    if name != "_common.sh":
        assert "set -euo pipefail" in path.read_text()
        assert os.access(path, os.X_OK), f"{name} is not executable"


def test_local_scripts_bind_loopback_only():
    start = (LOCAL / "start.sh").read_text()
    assert "HOST=127.0.0.1" in start
    assert '--dashboard-host="$HOST"' in start and '--host "$HOST"' in start
    assert '--node-ip-address="$HOST"' in start
    for name in ("start.sh", "stop.sh", "_common.sh"):
        assert "0.0.0.0" not in (LOCAL / name).read_text(), name
    assert re.search(r"^\s*[^#\n]*\bray stop\b", (LOCAL / "stop.sh").read_text(), re.M) is None


def test_local_start_help_and_stop_of_nothing(tmp_path):
    env = {**os.environ, "BINSWEEP_HOME": str(tmp_path)}
    out = subprocess.run([str(LOCAL / "start.sh"), "--help"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--workers" in out.stdout
    bad = subprocess.run([str(LOCAL / "start.sh"), "--bogus"], env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "unknown option" in bad.stderr
    stop = subprocess.run([str(LOCAL / "stop.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert stop.returncode == 0 and "nothing to stop" in stop.stderr


# ---------------------------------------------------------------------------------------------------- .rayignore
def test_rayignore_keeps_data_and_environments_out_of_job_uploads(tmp_path):
    from ray._private.runtime_env.packaging import _get_ignore_file

    excluded = _get_ignore_file(REPO, ".rayignore")
    assert excluded is not None
    for rel in ("data/loc/manifest.json", "runs/mlflow.db", ".venv/bin/python", ".git/HEAD", "mlruns/0/meta.yaml",
                "sweep_platform/__pycache__/cli.cpython-311.pyc", "binsweep.egg-info/PKG-INFO",
                "runs/cluster/pg/data/PG_VERSION"):
        assert excluded(REPO / rel), f"{rel} would be uploaded"
    for rel in ("sweep_platform/cli.py", "trainables/registry.py", "search_spaces/bast_tpe.yaml", "pyproject.toml"):
        assert not excluded(REPO / rel), f"{rel} would be left out"


def test_ray_up_ceiling_counts_gpu_nodes_that_are_not_up_yet():
    """`concurrency: auto` on the `ray up` head reads this file (as ~/ray_bootstrap_config.yaml): a GPU sweep file
    gets one trial per GPU node the autoscaler may start, although none is up when the sweep is submitted."""
    cfg = _load(AWS)
    ceiling = placement.bootstrap_ceiling(cfg)
    gpu_nodes = sum(t["max_workers"] for k, t in cfg["available_node_types"].items()
                    if t["resources"].get("GPU", 0) >= 1)
    assert ceiling["GPU"] == min(gpu_nodes, cfg["max_workers"])
    spec = load_sweep(REPO / "search_spaces" / "bast_tpe.yaml")
    head_now = cfg["available_node_types"][cfg["head_node_type"]]["resources"]
    assert placement.trials_at_once(spec, head_now, ceiling) == min(spec.trials, ceiling["GPU"])


def test_kuberay_heads_declare_what_the_gpu_group_can_grow_to():
    for name, doc in (("raycluster.yaml", _raycluster()), ("rayjob-sweep.yaml", _load(RAYJOB))):
        spec = doc["spec"] if name == "raycluster.yaml" else doc["spec"]["rayClusterSpec"]
        head = spec["headGroupSpec"]
        (container,) = _containers(head)
        declared = json.loads(_env(container)["BINSWEEP_MAX_RESOURCES"]["value"])
        cpu = float(container["resources"]["limits"]["cpu"])
        gpu = 0.0
        for g in spec["workerGroupSpecs"]:
            (c,) = _containers(g)
            cpu += g["maxReplicas"] * float(c["resources"]["limits"]["cpu"])
            gpu += g["maxReplicas"] * float(c["resources"]["limits"]["nvidia.com/gpu"])
        assert declared["CPU"] == cpu and declared["GPU"] == gpu, name
        assert {k: float(v) for k, v in head["resources"].items()} == \
            {k: float(v) for k, v in placement.head_resources().items()}, name
        assert declared["sweep_driver"] == 1 and declared["trial_driver"] == placement.TRIAL_DRIVER_SLOTS, name


def test_gpu_sweep_files_fit_a_4_vcpu_1_gpu_node():
    """g5.xlarge: 4 vCPUs, 1 GPU. A single-worker trial holds its worker's CPUs and GPU in its own actor; nothing
    else of a sweep asks for a CPU there (drivers are on the head), so no GPU is stranded."""
    for f in sorted((REPO / "search_spaces").glob("*.yaml")):
        spec = load_sweep(f)
        r = spec.resources
        if not r.gpus_per_worker:
            continue
        assert r.cpus_per_worker <= 4 and r.gpus_per_worker <= 1, f.name
        actor = placement.trial_resources(spec)
        if r.workers > 1:
            assert actor == {"CPU": 0, placement.TRIAL_DRIVER: 1}, f.name
