"""Packaging artefacts: the Dockerfile, the ECS task definition, the systemd unit. Checked
statically, and with the real tools (`systemd-analyze verify`) when the machine has them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from partman.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd unit files allow repeated keys: section -> key -> [values]."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        assert section is not None, f"key outside a section: {line}"
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def test_dockerfile_is_multi_stage_slim_non_root():
    text = (REPO / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(froms) >= 2, "multi-stage"
    assert all("slim" in f for f in froms), froms
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["partman"\]$', text, re.MULTILINE)
    assert re.search(r'^CMD \["run"\]$', text, re.MULTILINE)
    assert re.search(r"^EXPOSE 8080$", text, re.MULTILINE)
    assert Settings.model_fields["health_port"].default == 8080
    assert "/livez" in text
    # the final stage copies the built environment, it does not build
    final = text[text.rindex("\nFROM "):]
    assert "pip install" not in final and "COPY --from=build" in final
    # every path the build copies exists (README.md is the project's, required by pyproject too)
    for src in re.findall(r"^COPY (?!--)(.+) \S+$", text, re.MULTILINE):
        for name in src.split():
            if name != "README.md":
                assert (REPO / name).exists(), name
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'partman = "partman.entry:main"' in pyproject


def test_ecs_task_definition():
    doc = json.loads((REPO / "deploy" / "ecs-task-definition.json").read_text())
    assert doc["taskRoleArn"].startswith("arn:aws:iam::")
    containers = {c["name"]: c for c in doc["containerDefinitions"]}
    side = containers["partman"]
    assert side["command"] == ["run"]
    hc = " ".join(side["healthCheck"]["command"])
    assert side["healthCheck"]["command"][0] == "CMD" and "/livez" in hc and "/health" not in hc
    assert side["stopTimeout"] >= 10
    assert {p["containerPort"] for p in side["portMappings"]} == {8080}
    env = {e["name"]: e["value"] for e in side["environment"]}
    assert env["PARTMAN_HEALTH_PORT"] == "8080"
    assert "PARTMAN_DATABASE_URL" not in env  # the DSN comes from a secret, never plain text
    assert any(s["name"] == "PARTMAN_DATABASE_URL" for s in side["secrets"])
    assert not any("AWS_SECRET_ACCESS_KEY" in e["name"] for e in side["environment"])  # the task role, not keys
    assert containers["app"]["essential"] is True
    policy = json.loads((REPO / "deploy" / "partman-task-role-policy.json").read_text())
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert {"s3:PutObject", "s3:GetObject"} <= actions
    assert not any(a in ("s3:*", "*") for a in actions)


def test_systemd_unit_is_sane():
    path = REPO / "systemd" / "partman.service"
    unit = _unit(path)
    svc = unit["Service"]
    assert svc["Type"] == ["simple"]
    assert svc["EnvironmentFile"] and not svc["EnvironmentFile"][0].startswith("-")
    assert svc["Restart"] == ["on-failure"]
    assert svc["User"][0] not in ("root", "0") and "DynamicUser" not in svc
    assert svc["ExecStart"][0].endswith("partman run")
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes"}.items():
        assert svc[key] == [value], key
    stop = svc["TimeoutStopSec"][0]
    assert int(stop.rstrip("s")) > 10  # partman needs up to 10 s
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists: point it at this interpreter, keep everything else
    text = (REPO / "systemd" / "partman.service").read_text()
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable} -m partman.cli", text, flags=re.MULTILINE)
    unit = tmp_path / "partman.service"
    unit.write_text(text)
    p = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    out = p.stdout + p.stderr
    if p.returncode != 0 and re.search(r"System has not been booted|Failed to (connect|initialize)|No such file or directory.*(bus|manager)", out):
        pytest.skip(f"systemd-analyze cannot run here: {out.strip()[:200]}")
    assert p.returncode == 0, out
    assert "partman.service" not in out, out  # no warnings about our unit


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
def test_docker_image_builds_runs_as_non_root():
    if not _docker_answers():
        pytest.skip("no Docker engine answers")
    if not (REPO / "README.md").exists():
        pytest.skip("README.md (required by pyproject and the image build) is not written yet")
    tag = "partman:packaging-test"
    build = subprocess.run(["docker", "build", "-t", tag, str(REPO)], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    try:
        version = subprocess.run(["docker", "run", "--rm", tag, "--version"], capture_output=True, text=True, timeout=120)
        assert version.returncode == 0 and "partman" in version.stdout, version.stderr
        uid = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"], capture_output=True, text=True,
                             timeout=120)
        assert uid.stdout.strip() not in ("", "0"), uid
        inspect = json.loads(subprocess.run(["docker", "image", "inspect", tag], capture_output=True, text=True).stdout)[0]
        cfg = inspect["Config"]
        assert cfg["Entrypoint"] == ["partman"] and cfg["Cmd"] == ["run"] and "8080/tcp" in cfg["ExposedPorts"]
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=120)


def test_install_instructions_install_this_checkout_not_a_name_on_pypi():
    """partman is not published on PyPI: every `pip install` the README, the unit file, the Dockerfile
    and deploy/ show installs a path (the checkout, `.`) or a built wheel, never the bare name."""
    files = [REPO / "README.md", REPO / "Dockerfile", REPO / "systemd" / "partman.service",
             *sorted((REPO / "deploy").iterdir())]
    found = []
    for path in files:
        for line in path.read_text().splitlines():
            for m in re.finditer(r"\bpip install\s+((?:-\S+\s+)*)(\S+)", line):
                target = m.group(2).strip("'\"`")
                found.append((path.name, target))
                assert target.startswith((".", "/", "dist/")) or target.endswith(".whl"), (path.name, line)
    assert ("README.md", ".") in found and any(name == "partman.service" for name, _ in found), found
