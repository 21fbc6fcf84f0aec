"""A simulated node (tests/kubelet.py) through tailrace end to end: CRI and docker json-file
lines, messages over 16 KiB in pieces with the other stream's lines between them, the
kubelet's rotation with gzip (docker's rename chain), every message delivered exactly once,
its body byte-identical, with its pod's identity, stream and time."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import base_config, wait_for
from tests.kubelet import Message, Node


def delivered(out: Path) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """(resource attributes, record) of every record in an OTLP JSON lines file."""
    got = []
    if not out.exists():
        return got
    for line in out.read_bytes().splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        for rl in orjson.loads(line)["resourceLogs"]:
            res = {a["key"]: a["value"]["stringValue"] for a in rl["resource"]["attributes"]}
            for sl in rl["scopeLogs"]:
                got.extend((res, r) for r in sl["logRecords"])
    return got


def identity(m: Message, fmt: str) -> dict[str, str]:
    c = m.container
    if fmt == "docker":
        return {"container.id": c.uid}
    return {
        "k8s.namespace.name": c.namespace,
        "k8s.pod.name": c.pod,
        "k8s.pod.uid": c.uid,
        "k8s.container.name": c.name,
        "k8s.container.restart_count": str(c.restart),
    }


@pytest.mark.parametrize("fmt", ["cri", "docker"])
def test_a_node_every_message_once_with_its_pod_stream_and_time(tmp_path: Path, tailrace: Any, fmt: str) -> None:
    root = tmp_path / ("pods" if fmt == "cri" else "containers")
    # The node of the acceptance: 3 namespaces × 20 pods × 2 containers.
    node = Node(root, namespaces=3, pods=20, containers=2, fmt=fmt, rotate_bytes=64 * 1024, keep=4)
    glob = f"{root}/*/*/*.log" if fmt == "cri" else f"{root}/*/*-json.log"
    cfg = base_config(tmp_path, [glob], format="auto", watch="auto")
    cfg["inputs"][0].pop("poll_interval")
    t = tailrace(cfg, env={"K8S_NODE_NAME": "node-7"}).start()
    out = tmp_path / "out" / "logs.jsonl"
    try:
        wait_for(lambda: t.get("/readyz")[0] == 200, 30, "tailrace ready")
        for _ in range(30):  # 15,000 messages over ~3 s, with rotations
            node.write(500, long_every=40)
            time.sleep(0.05)
        expected = len(node.messages)
        wait_for(lambda: len(delivered(out)) >= expected, 60, f"{expected} records")
    finally:
        node.close()
    assert t.stop() == 0
    got = delivered(out)
    by_key: dict[tuple[str, str], list[tuple[dict[str, str], dict[str, Any]]]] = collections.defaultdict(list)
    for res, rec in got:
        body = rec["body"]["stringValue"]
        key, seq = body.split(" ", 2)[:2]
        by_key[(key, seq)].append((res, rec))
    rotations = sum(c.rotations for c in node.containers)
    assert rotations >= 120, "containers rotated, several times on average"
    lost = dup = 0
    for m in node.messages:
        recs = by_key.get((m.container.key, m.body.split(" ", 2)[1]), [])
        if not recs:
            lost += 1
            continue
        dup += len(recs) - 1
        res, rec = recs[0]
        attrs = {a["key"]: next(iter(a["value"].values())) for a in rec["attributes"]}
        assert rec["body"]["stringValue"] == m.body, m.container.key
        assert attrs["log.iostream"] == m.stream
        assert int(rec["timeUnixNano"]) == m.time_ns
        assert {k: res[k] for k in identity(m, fmt)} == identity(m, fmt)
        assert res["k8s.node.name"] == "node-7"
        assert not {"tailrace.partial", "tailrace.split", "tailrace.parse_error"} & attrs.keys(), attrs
    assert (lost, dup, len(got)) == (0, 0, len(node.messages))
    if fmt == "cri":
        gz = list(root.glob("*/*/*.gz"))
        assert gz, "the kubelet compressed rotated files (never read as text: no parse error above)"


def test_lines_compressed_while_tailrace_was_down_are_read_from_the_gz(tmp_path: Path, tailrace: Any) -> None:
    # tailrace is stopped mid-file; meanwhile the container writes on and the kubelet rotates
    # several times, compressing (and unlinking) the file tailrace had not finished and files
    # it never saw. Restarted, it reads those lines from the .gz files: nothing lost, nothing
    # twice. (Every peer loses them.)
    root = tmp_path / "pods"
    node = Node(root, namespaces=1, pods=1, containers=1, fmt="cri", rotate_bytes=16 * 1024, keep=8)
    cfg = base_config(tmp_path, [f"{root}/*/*/*.log"], format="cri", watch="auto")
    out = tmp_path / "out" / "logs.jsonl"
    first = tailrace(cfg).start()
    node.write(40, long_every=1000)
    wait_for(lambda: len(delivered(out)) >= 40, 30, "the first 40 messages")
    assert first.stop() == 0
    node.write(400, long_every=1000)  # ~80 KiB: about five rotations while down
    (c,) = node.containers
    assert c.rotations >= 4 and len([p for p in c.rotated if p.suffix == ".gz"]) >= 3, c.rotated
    # The file read at the stop was rotated first, then compressed and unlinked.
    assert c.rotated[0].suffix == ".gz" and not c.rotated[0].with_suffix("").exists()
    second = tailrace(cfg).start()
    expected = len(node.messages)
    wait_for(lambda: len(delivered(out)) >= expected, 30, f"{expected} messages")
    stats = orjson.loads(second.get("/stats")[1])["totals"]
    assert second.stop() == 0
    node.close()
    got = collections.Counter(rec["body"]["stringValue"] for _, rec in delivered(out))
    assert (sum(got.values()), len(got)) == (expected, expected)
    assert set(got) == {m.body for m in node.messages}
    # The file being read at the stop, and each compressed file never seen.
    gz = len([p for p in c.rotated if p.suffix == ".gz"])
    assert stats["recovered_from_gzip"] == gz, (stats["recovered_from_gzip"], c.rotated)


def test_sigterm_under_load_then_restart_every_message_once(tmp_path: Path, tailrace: Any) -> None:
    # SIGTERM right after a burst (lines read, batches open and in flight): tailrace delivers
    # what it read within shutdown_grace, writes its checkpoints and exits 0; the node writes
    # and rotates on meanwhile; restarted, it delivers the rest: every message exactly once.
    root = tmp_path / "pods"
    node = Node(root, namespaces=2, pods=2, containers=2, fmt="cri", rotate_bytes=48 * 1024, keep=6)
    cfg = base_config(tmp_path, [f"{root}/*/*/*.log"], format="cri", watch="auto")
    cfg["shutdown_grace"] = "5s"
    out = tmp_path / "out" / "logs.jsonl"
    first = tailrace(cfg).start()
    wait_for(lambda: first.get("/readyz")[0] == 200, 30, "tailrace ready")
    for _ in range(5):
        node.write(100, long_every=30)
        time.sleep(0.05)
    assert first.stop() == 0
    # Everything read was delivered before the grace period ran out (else tailrace says so).
    assert "shutdown grace period over" not in first.log() and "stopped" in first.log()
    before = len(delivered(out))
    assert 0 < before <= len(node.messages)
    node.write(300, long_every=30)
    second = tailrace(cfg).start()
    expected = len(node.messages)
    wait_for(lambda: len(delivered(out)) >= expected, 30, f"{expected} messages")
    assert second.stop() == 0
    node.close()
    got = collections.Counter(rec["body"]["stringValue"] for _, rec in delivered(out))
    assert (sum(got.values()), set(got)) == (expected, {m.body for m in node.messages})
