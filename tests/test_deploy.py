"""deploy/ as it is: the manifests and the Helm chart's output validate against a current
Kubernetes release's schemas (strict), `helm lint` passes, the chart with its default values
renders the plain manifests' objects, and the pieces agree with each other and with the
configuration (mounts cover the globs and the state_dir, probes hit the admin port, the grace
period exceeds shutdown_grace, the node-name variable is the one read, the ConfigMap is
configs/kubernetes.yaml). The Dockerfile's install steps run in a fresh virtualenv (no Docker
engine here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import yaml

from collector.flow import config
from tests.conftest import ROOT, require_tool

MANIFEST = ROOT / "deploy" / "kubernetes" / "tailrace.yaml"
CHART = ROOT / "deploy" / "helm" / "tailrace"
HELM = ROOT / "target" / "helm" / "helm"


def objects(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def validate(path: Path) -> None:
    kv = require_tool("kubernetes-validate", "the manifests are checked against Kubernetes' schemas")
    r = subprocess.run([kv, "--strict", str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = re.findall(r"passed for resource (\w+)/", r.stdout + r.stderr)
    assert sorted(kinds) == ["configmap", "daemonset", "namespace", "priorityclass", "serviceaccount"], r.stdout


def helm() -> str:
    if not HELM.exists():
        return require_tool("helm", "the chart is linted and rendered (make tools builds target/helm/helm)")
    return str(HELM)


def test_the_manifests_validate_strictly() -> None:
    validate(MANIFEST)


def test_the_chart_lints_and_renders_the_manifests(tmp_path: Path) -> None:
    h = helm()
    lint = subprocess.run([h, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=120, check=False)
    assert lint.returncode == 0 and "0 chart(s) failed" in lint.stdout, lint.stdout + lint.stderr
    out = subprocess.run([h, "template", "tailrace", str(CHART)], capture_output=True, text=True, timeout=120,
                         check=True)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(out.stdout)
    validate(rendered)
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(objects(out.stdout), key=key) == sorted(objects(MANIFEST.read_text()), key=key)


def _daemonset() -> tuple[dict[str, Any], dict[str, Any], config.Config]:
    objs = {o["kind"]: o for o in objects(MANIFEST.read_text())}
    ds = objs["DaemonSet"]
    text = objs["ConfigMap"]["data"]["tailrace.yaml"]
    return ds, objs, config.parse(text)


def test_the_configmap_is_the_shipped_configuration() -> None:
    ds, objs, _ = _daemonset()
    shipped = (ROOT / "configs" / "kubernetes.yaml").read_text()
    assert objs["ConfigMap"]["data"]["tailrace.yaml"] == shipped
    assert (CHART / "files" / "tailrace.yaml").read_text() == shipped


def test_the_pieces_agree() -> None:
    ds, objs, cfg = _daemonset()
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def mount_of(path: str) -> dict[str, Any]:
        best = max((m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")), key=len)
        return mounts[best]

    # Every glob's literal head is under a mount from the host (read-only), the state_dir on a
    # writable host path that outlives the pod.
    for inp in cfg.inputs:
        for g in inp.paths:
            head = g.split("*")[0]
            m = mount_of(head)
            assert m["readOnly"] and "hostPath" in volumes[m["name"]], (g, m)
    state = mount_of(cfg.state_dir)
    assert state["mountPath"] == cfg.state_dir and not state.get("readOnly")
    assert volumes[state["name"]]["hostPath"]["type"] == "DirectoryOrCreate"
    assert mount_of("/etc/tailrace/tailrace.yaml")["name"] == "config"
    assert c["args"][-1] == "/etc/tailrace/tailrace.yaml"
    # Probes hit the admin endpoint's port, on the pod IP the configuration binds.
    port = int(cfg.admin.address.rpartition(":")[2])
    (admin,) = [p for p in c["ports"] if p["name"] == "admin"]
    assert admin["containerPort"] == port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # The grace period leaves time for shutdown_grace (deliver or spool, then checkpoints).
    assert pod["terminationGracePeriodSeconds"] > float(cfg.shutdown_grace)
    # The node name: the variable the pipeline reads, from the downward API.
    assert env["K8S_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert 'os.environ.get("K8S_NODE_NAME")' in (ROOT / "collector" / "flow" / "pipeline.py").read_text()
    # Least privilege: root with every capability dropped but DAC_READ_SEARCH and SYS_PTRACE
    # (the profiler is on), no API token, a read-only root filesystem.
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["DAC_READ_SEARCH", "SYS_PTRACE"]} and cfg.profiler.enabled
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert pod["automountServiceAccountToken"] is False
    assert objs["ServiceAccount"]["automountServiceAccountToken"] is False
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == objs["PriorityClass"]["metadata"]["name"]
    # tailrace's own pod is excluded: its pods are named after the DaemonSet, in its namespace
    # (the defaults of ${POD_NAMESPACE} and ${POD_NAME_PREFIX}, set from the pod itself).
    assert env["POD_NAME_PREFIX"]["value"] == ds["metadata"]["name"]
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert cfg.inputs[0].exclude == [f"/var/log/pods/{ds['metadata']['namespace']}_{ds['metadata']['name']}-*/**"]


def test_the_dockerfile_install_steps_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    # The Dockerfile's two INSTALL-STEP lines: the wheel built by maturin, installed with its
    # dependencies (py-spy among them) into a fresh environment.
    steps = re.findall(r"# INSTALL-STEP (\w+):", (ROOT / "deploy" / "Dockerfile").read_text())
    assert steps == ["build", "install"]
    wheels = tmp_path / "wheels"
    maturin = Path(sys.executable).with_name("maturin")
    subprocess.run([str(maturin), "build", "--release", "--quiet", "--out", str(wheels)], cwd=ROOT, check=True,
                   timeout=900)
    (wheel,) = wheels.glob("tailrace-*.whl")
    env_dir = tmp_path / "image"
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin" / "pip"
    subprocess.run([str(pip), "install", "--quiet", "--disable-pip-version-check", str(wheel)], check=True, timeout=900)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = lambda *a: subprocess.run(  # noqa: E731
        [str(env_dir / "bin" / a[0]), *a[1:]], capture_output=True, text=True, cwd=tmp_path, env=clean, timeout=300
    )
    v = run("tailrace", "--version")
    assert v.returncode == 0 and v.stdout.startswith("tailrace "), v.stderr
    chk = run("tailrace", "check-config", str(ROOT / "configs" / "kubernetes.yaml"))
    assert chk.returncode == 0 and "ok (1 inputs, 1 outputs)" in chk.stdout, chk.stderr
    assert run("py-spy", "--version").returncode == 0
    # The harness runs from the wheel: a quick comparison on a directory of our choosing, with
    # every line accounted for in each mode and a recommendation; and a small bulk read.
    (tmp_path / "judged").mkdir()
    q = run("tailrace", "bench", "watchmodes", "--quick", "--dir", str(tmp_path / "judged"), "--results",
            str(tmp_path / "res"))
    assert q.returncode == 0, q.stderr
    for mode in ("auto", "inotify", "poll"):
        assert re.search(rf"^  {mode}: [0-9.]+ µs of CPU per line, .* lost 0, duplicated 0$", q.stdout, re.M), q.stdout
    assert "Recommendation: watch: auto (" in q.stdout and not list((tmp_path / "judged").iterdir())
    b = run("tailrace", "bench", "throughput", "--gib", "0.01", "--runs", "1", "--outputs", "otlp_http",
            "--dir", str(tmp_path / "bulk"), "--results", str(tmp_path / "res"))
    assert b.returncode == 0 and re.search(r"^\| otlp_http \| 0\.01 GiB", b.stdout, re.M), b.stderr
    # The demo's example is inside the package; nothing but the package lands in site-packages.
    (site,) = (env_dir / "lib").glob("python3*/site-packages")
    assert (site / "collector" / "local.yaml").read_text() == (ROOT / "configs" / "local.yaml").read_text()
    assert not (site / "configs").exists()


def test_the_systemd_unit_verifies_and_reloads_restarts_as_documented(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit (its ExecStart pointed at this build's tailrace),
    and what the README says of it: reload by SIGHUP, back after any death but a configuration
    error."""
    analyze = require_tool("systemd-analyze", "to verify deploy/tailrace.service")
    unit = (ROOT / "deploy" / "tailrace.service").read_text()
    for line in ("ExecReload=/bin/kill -HUP $MAINPID", "Restart=always", "RestartPreventExitStatus=2",
                 "CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_SYS_PTRACE", "NoNewPrivileges=true",
                 "ProtectSystem=strict"):
        assert line in unit.splitlines(), line
    here = tmp_path / "tailrace.service"
    here.write_text(unit.replace("/usr/local/bin/tailrace", str(Path(sys.executable).with_name("tailrace"))))
    r = subprocess.run([analyze, "verify", str(here)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr


def test_systemd_is_told_ready_after_the_first_look_and_stopping_on_sigterm(tmp_path: Path, tailrace) -> None:  # type: ignore[no-untyped-def]
    """`Type=notify`: READY=1 once every input made its first look, STOPPING=1 on SIGTERM,
    through `$NOTIFY_SOCKET` (a datagram socket of the test's, as systemd's)."""
    import socket

    from tests.conftest import base_config

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("one\n")
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        t = tailrace(base_config(tmp_path, [f"{logs}/*.log"]), env={"NOTIFY_SOCKET": str(path)}).start()
        assert sock.recv(4096) == b"READY=1\nSTATUS=tailing"
        assert "running" in t.log()  # told after start-up, not before
        assert t.proc is not None
        t.proc.send_signal(__import__("signal").SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert t.proc.wait(timeout=30) == 0
        t.proc = None


def test_the_packaged_example_is_configs_local_yaml() -> None:
    assert (ROOT / "collector" / "local.yaml").read_text() == (ROOT / "configs" / "local.yaml").read_text()
