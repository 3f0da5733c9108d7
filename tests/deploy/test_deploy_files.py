"""Everything under deploy/ is valid: Dockerfiles pass hadolint, manifests their Kubernetes schemas, and
the settings they carry load in `narset serve`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from narset.server.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
KUBERNETES = "1.33"
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "job.Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile):
    """hadolint finds nothing in the server's and the example job's Dockerfiles (info level included)."""
    done = subprocess.run([HADOLINT, str(DEPLOY / dockerfile)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.name for m in MANIFESTS])
def test_manifests_pass_their_kubernetes_schema(manifest):
    """Each resource validates strictly against Kubernetes' schemas; a PyTorchJob's pod template as a PodTemplate."""
    for document in _documents(manifest):
        if document["kind"] == "PyTorchJob":
            for role, spec in document["spec"]["pytorchReplicaSpecs"].items():
                template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()}}
                kubernetes_validate.validate({**template, "template": spec["template"]}, KUBERNETES, strict=True)
        else:
            kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_the_configmaps_narset_toml_loads_as_server_settings(tmp_path):
    """The narset.toml the Deployment mounts is valid settings: TLS files, tokens, a public bind allowed by both."""
    (config_map,) = _documents(DEPLOY / "k8s" / "configmap.yaml")
    path = tmp_path / "narset.toml"
    path.write_text(config_map["data"]["narset.toml"])
    settings = load_settings(path)
    assert tomllib.loads(path.read_text())["address"] == settings.address == "0.0.0.0:50051"
    assert settings.tls_cert is not None and {t.role for t in settings.tokens} == {"operator", "worker"}


def test_the_configmaps_postgres_settings_load_and_differ_only_in_the_store(tmp_path):
    """narset-postgres.toml (replicas on PostgreSQL) is valid settings: a postgresql:// URL without a password
    (libpq reads PGPASSWORD, from the narset-postgres Secret), everything else as in narset.toml."""
    (config_map,) = _documents(DEPLOY / "k8s" / "configmap.yaml")
    loaded = {}
    for key in ("narset.toml", "narset-postgres.toml"):
        (tmp_path / key).write_text(config_map["data"][key])
        loaded[key] = load_settings(tmp_path / key)
    url = loaded["narset-postgres.toml"].db_path
    assert isinstance(url, str) and urlsplit(url).scheme == "postgresql" and urlsplit(url).password is None
    replicated = loaded["narset-postgres.toml"].model_dump() | {"db_path": Path("/data/narset.db")}
    assert replicated == loaded["narset.toml"].model_dump()
    deployment = _documents(DEPLOY / "k8s" / "deployment.yaml")[0]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "narset-postgres"
    secrets = {d["metadata"]["name"] for d in _documents(DEPLOY / "k8s" / "secret.yaml")}
    assert "narset-postgres" in secrets


def test_compose_runs_narset_with_a_worker_token_and_the_job_after_it_is_healthy(monkeypatch):
    """compose.yaml: Narset's token list parses as settings once interpolated; the job waits for Narset's health."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    narset, train = compose["services"]["narset"], compose["services"]["train"]
    tokens = narset["environment"]["NARSET_TOKENS"].replace(
        "${NARSET_WORKER_TOKEN_SHA256:?run narset token first}", "ab" * 32
    )
    monkeypatch.setenv("NARSET_TOKENS", json.dumps(json.loads(tokens)))
    monkeypatch.setenv("NARSET_INSECURE", narset["environment"]["NARSET_INSECURE"])
    settings = load_settings(address="0.0.0.0:50051")
    assert [t.role for t in settings.tokens] == ["worker"] and settings.insecure
    assert train["depends_on"]["narset"]["condition"] == "service_healthy"
    assert "narset:50051" in train["command"]


def test_a_lock_wait_freezes_the_whole_replica_health_checks_included(tmp_path):
    """A replica waits for a store lock on its event loop, its health checks with it: the replicated settings'
    lock timeout ends that wait before either probe gives up (it was a fixed 30 s against 4 s probes)."""
    (config_map,) = _documents(DEPLOY / "k8s" / "configmap.yaml")
    path = tmp_path / "narset-postgres.toml"
    path.write_text(config_map["data"]["narset-postgres.toml"])
    lock_timeout_s = load_settings(path).postgres_lock_timeout_s
    container = _documents(DEPLOY / "k8s" / "deployment.yaml")[0]["spec"]["template"]["spec"]["containers"][0]
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        command = probe["exec"]["command"]
        client_timeout_s = float(command[command.index("--timeout") + 1])
        assert lock_timeout_s < client_timeout_s <= probe["timeoutSeconds"]
