"""Configuration: bad configurations exit 2 naming the key; units and ${ENV} expand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector.flow import config
from tests.conftest import ROOT


def check_config(tmp_path: Path, text: str, command: str = "check-config") -> subprocess.CompletedProcess[str]:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    args = [str(f)] if command == "check-config" else ["--config", str(f)]
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", command, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


GOOD = "inputs: [{paths: ['/tmp/*.log']}]\noutputs: [{type: blackhole}]\n"


@pytest.mark.parametrize("name", ["local.yaml", "otlp.yaml", "kubernetes.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "collector.cli", "check-config", str(ROOT / "configs" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "1 inputs, 1 outputs" in r.stdout


@pytest.mark.parametrize(
    "text, names",
    [
        ("inputs: [{paths: ['/x'], bogus: 1}]\noutputs: [{type: blackhole}]", ["bogus", "$.inputs[0]"]),
        (
            "inputs: [{paths: ['/x'], max_line_bytes: [1]}]\noutputs: [{type: blackhole}]",
            ["$.inputs[0].max_line_bytes"],
        ),
        ("inputs: [{paths: ['/x'], poll_interval: soon}]\noutputs: [{type: blackhole}]", ["poll_interval", "soon"]),
        ("inputs: [{paths: []}]\noutputs: [{type: blackhole}]", ["paths", "$.inputs[0]"]),
        ("inputs: [{exclude: ['/x']}]\noutputs: [{type: blackhole}]", ["paths", "$.inputs[0]"]),
        ("inputs: [{paths: ['/x']}]\noutputs: [{type: kafka}]", ["$.outputs[0].type", "kafka"]),
        ("inputs: [{paths: ['/x'], watch: fsevents}]\noutputs: [{type: blackhole}]", ["$.inputs[0].watch", "fsevents"]),
        ("inputs: [{paths: ['/x']}]\noutputs: [{type: file}]", ["path", "$.outputs[0]"]),
        ("inputs: [{paths: ['/x']}]\noutputs: [{type: blackhole}]\nbatch: {max_bytes: 0}", ["max_bytes"]),
        ("inputs: [{paths: ['/x']}]\noutputs: [{type: blackhole}]\nstate_dirr: /tmp", ["state_dirr"]),
        (
            "inputs: [{paths: ['${TAILRACE_TEST_UNSET_VAR}']}]\noutputs: [{type: blackhole}]",
            ["TAILRACE_TEST_UNSET_VAR", "$.inputs[0].paths[0]"],
        ),
        # One line naming the file, line and column, not PyYAML's several saying `<unicode string>`.
        ("inputs:\n  - paths: ['/x']\n    watch: [inotify\n", ["c.yaml:4:1: not valid YAML: expected ',' or ']', "
                                                            "but got '<stream end>' (while parsing a flow sequence)"]),
    ],
)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, text: str, names: list[str], command: str) -> None:
    r = check_config(tmp_path, text, command)
    assert r.returncode == 2, (r.stdout, r.stderr)
    for n in names:
        assert n in r.stderr, r.stderr


def test_good_config(tmp_path: Path) -> None:
    r = check_config(tmp_path, GOOD)
    assert r.returncode == 0, r.stderr


def test_units_env_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGDIR", "/var/log/pods")
    cfg = config.parse(
        "inputs: [{paths: ['${LOGDIR}/**/*.log', '${NOPE:-/srv}/*.log'], poll_interval: 1m, max_line_bytes: 64KiB,"
        " partial_flush: 1.5}]\noutputs: [{type: file, path: /tmp/o}, {type: blackhole}]\nbatch: {max_age: 250ms}"
    )
    inp = cfg.inputs[0]
    assert inp.paths == ["/var/log/pods/**/*.log", "/srv/*.log"]
    assert (inp.poll_interval, inp.max_line_bytes, inp.partial_flush) == (60.0, 65536, 1.5)
    assert (inp.name, inp.watch, inp.read_from, inp.rotate_wait) == ("input0", "auto", "beginning", 5.0)
    assert (cfg.batch.max_age, cfg.batch.max_bytes, cfg.batch.max_records) == (0.25, 2 << 20, 10_000)
    assert [o.name for o in cfg.outputs] == ["file0", "blackhole1"]
    assert config.size(3_000, "k") == 3000 and config.size("2GiB", "k") == 2 << 30


def test_naive_mode_is_runnable_but_warned(tmp_path: Path) -> None:
    r = check_config(tmp_path, "inputs: [{paths: ['/x'], watch: naive}]\noutputs: [{type: blackhole}]")
    assert r.returncode == 0, r.stderr
    assert "$.inputs[0].watch: naive reproduces Fluent Bit" in r.stderr


def test_rescan_default_follows_the_watch_mode() -> None:
    cfg = config.parse(
        "inputs: [{paths: [/a]}, {paths: [/b], watch: poll}, {paths: [/c], watch: poll, rescan_interval: 3s}]\n"
        "outputs: [{type: blackhole}]"
    )
    assert [i.rescan_interval for i in cfg.inputs] == [60.0, 1.0, 3.0]
    assert cfg.inputs[0].coalesce == "auto"  # reads wait until the batch would close
    assert cfg.batch.max_age == 0.2


def test_coalesce_is_auto_or_a_duration(tmp_path: Path) -> None:
    cfg = config.parse("inputs: [{paths: [/a], coalesce: 5ms}]\noutputs: [{type: blackhole}]")
    assert cfg.inputs[0].coalesce == 0.005
    r = check_config(tmp_path, "inputs: [{paths: ['/x'], coalesce: soon}]\noutputs: [{type: blackhole}]")
    assert r.returncode == 2
    assert "coalesce" in r.stderr and "soon" in r.stderr, r.stderr


def test_environment_values_take_the_type_of_their_key_and_dollar_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECORDS", "500")
    monkeypatch.setenv("EMPTY", "")
    monkeypatch.setenv("KEY", "0123")  # YAML 1.1: the octal 83
    monkeypatch.setenv("TENANT", "on")  # YAML 1.1: true
    monkeypatch.setenv("SKIP", "true")
    monkeypatch.setenv("EVERY", "5")
    cfg = config.parse(
        "inputs: [{paths: ['/srv/$$weird/${env:SUB:-x}/*.log'], max_line_bytes: '${LINE:-65536}',"
        " include_file_path: '${SKIP}', poll_interval: '${EVERY}'}]\n"
        "outputs: [{type: otlp_http, endpoint: 'http://h:4318',"
        " headers: {x-api-key: '${KEY}', x-tenant: '${TENANT}'}}]\n"
        "batch: {max_records: '${RECORDS}', max_age: '${AGE:-250ms}'}\n"
        "state_dir: '${EMPTY:-/var/lib/t}'"
    )
    # A whole-value reference is typed by its key: integers, booleans and durations where they
    # go, the text itself where text goes (catches YAML 1.1 typing: 83 and True).
    assert (cfg.batch.max_records, cfg.inputs[0].max_line_bytes, cfg.batch.max_age) == (500, 65536, 0.25)
    assert (cfg.inputs[0].include_file_path, cfg.inputs[0].poll_interval) == (True, 5.0)
    out = cfg.outputs[0]
    assert isinstance(out, config.OtlpHttpOutput)
    assert out.headers == {"x-api-key": "0123", "x-tenant": "on"}
    assert cfg.inputs[0].paths == ["/srv/$weird/x/*.log"]  # `$$` is a `$`; `${env:…}` accepted
    assert cfg.state_dir == "/var/lib/t"  # `:-` also covers a variable set but empty
    with pytest.raises(config.ConfigError) as e:
        config.parse("inputs: [{paths: ['${LOGS:?set LOGS to the log directory}/*.log']}]\n"
                     "outputs: [{type: blackhole}]", "c.yaml")
    assert str(e.value) == "c.yaml:1: $.inputs[0].paths[0]: set LOGS to the log directory (${LOGS})"
    # Text that is no number where a number goes is an error naming the key and the text, which
    # the file does not show (YAML 1.1 read `1:30` as 90, silently).
    monkeypatch.setenv("RECORDS", "1:30")
    with pytest.raises(config.ConfigError) as e:
        config.parse("inputs: [{paths: [/x]}]\noutputs: [{type: blackhole}]\n"
                     "batch: {max_records: '${RECORDS}'}", "c.yaml")
    assert str(e.value) == "c.yaml:3: $.batch.max_records: Expected `int`, got `str`: '1:30'"


def test_own_logs_have_rfc3339_times_warn_is_warning_and_flags_win(tmp_path: Path) -> None:
    import contextlib
    import io
    import json
    import re

    from collector import log

    cfg = tmp_path / "c.yaml"
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg.write_text(f"state_dir: {tmp_path}/state\ninputs: [{{paths: ['{logs}/*.log']}}]\n"
                   "outputs: [{type: blackhole}]\nlog: {level: warn}\nprogress_interval: 0s\n"
                   "admin: {enabled: false}\nprofiler: {enabled: false}\n")
    # The file says warn (no info lines); the flags say info, as JSON.
    p = subprocess.Popen([sys.executable, "-m", "collector.cli", "run", "--config", str(cfg), "--log-level", "info",
                          "--log-format", "json"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    first = p.stderr.readline()
    p.terminate()
    p.communicate(timeout=30)
    rec = json.loads(first)
    assert rec["level"] == "info" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["time"]), rec
    # Text: the time first, then the level.
    log.configure("warn")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        log.info("hidden")
        log.warning("shown")
    log.configure("info")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z tailrace warning: shown\n", err.getvalue())


def _schema_keys(tp: object, prefix: str) -> set[str]:
    """Every key path of the configuration schema (`inputs[].paths`, `outputs[].tls.ca_file`)."""
    import types
    import typing

    import msgspec

    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return set().union(*(_schema_keys(a, prefix) for a in args if a is not type(None)))
    if typing.get_origin(tp) is list and args and isinstance(args[0], type) and issubclass(args[0], msgspec.Struct):
        return _schema_keys(args[0], prefix + "[]")
    if typing.get_origin(tp) is list and args and typing.get_args(args[0]):
        return _schema_keys(args[0], prefix + "[]")
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        keys: set[str] = set()
        tag = tp.__struct_config__.tag_field
        if tag:
            keys.add(f"{prefix}.{tag}".lstrip("."))
        for f in msgspec.structs.fields(tp):
            keys |= _schema_keys(f.type, f"{prefix}.{f.name}".lstrip(".")) or {f"{prefix}.{f.name}".lstrip(".")}
        return keys
    return set()


def test_every_configuration_key_has_a_row_in_the_readme() -> None:
    """A key added to the schema without a README row fails (rows may name several keys:
    `profiler.every`, `.duration`, `.rate`)."""
    import re
    import typing

    keys = _schema_keys(typing.get_type_hints(config.Config)["inputs"], "inputs")
    for name, tp in typing.get_type_hints(config.Config).items():
        if name != "inputs":
            keys |= _schema_keys(tp, name) or {name}
    documented: set[str] = set()
    for row in (ROOT / "README.md").read_text().splitlines():
        if not row.startswith("| `"):
            continue
        names = re.findall(r"`([^`]+)`", row.split(" | ")[0])
        base = ""
        for n in names:
            if n.startswith("."):
                documented.add(base + n)
            else:
                documented.add(n)
                base = n.rsplit(".", 1)[0] if "." in n else ""
    # A section documented as a whole (`telemetry.tls`: "TLS as for otlp_http") covers its keys;
    # `inputs[]` and `outputs[]` (what the lists are) cover none.
    wholes = [d for d in documented if not d.endswith("[]")]
    missing = sorted(k for k in keys if k not in documented and not any(k.startswith(d + ".") for d in wholes))
    assert missing == [], missing


def test_check_config_reports_every_error_with_file_line_key_and_a_near_match(tmp_path: Path) -> None:
    text = (
        "inputs:\n"
        "  - paths: ['/var/log/*.log']\n"
        "    watch: inotfy\n"
        "    read_from: start\n"
        "  - pahts: ['/x']\n"
        "  - paths: /var/log/one.log\n"
        "    max_line_bytes: -5\n"
        "outputs:\n"
        "  - type: otlp_htp\n"
        "batch:\n"
        "  max_age: soon\n"
        "  max_records: lots\n"
        "state_dirr: /tmp\n"
    )
    r = check_config(tmp_path, text)
    assert r.returncode == 2
    f = tmp_path / "c.yaml"
    assert r.stderr.splitlines() == [
        f"tailrace: configuration error: {f}:3: $.inputs[0].watch: Invalid enum value 'inotfy' "
        "(one of: auto, inotify, poll, naive; did you mean `inotify`?)",
        # A second error in the same input, and in the same section, is not hidden by the first;
        # `pahts` is not followed by "missing `paths`" (its near match says that already).
        f"tailrace: configuration error: {f}:4: $.inputs[0].read_from: Invalid enum value 'start' "
        "(one of: beginning, end)",
        f"tailrace: configuration error: {f}:5: $.inputs[1]: Object contains unknown field `pahts` "
        "(did you mean `paths`?)",
        # A required key with a wrong value is said once, not then said missing too.
        f"tailrace: configuration error: {f}:6: $.inputs[2].paths: Expected `array`, got `str`: "
        "'/var/log/one.log'",
        f"tailrace: configuration error: {f}:7: $.inputs[2].max_line_bytes: must be positive",
        f"tailrace: configuration error: {f}:9: $.outputs[0].type: Invalid value 'otlp_htp' "
        "(one of: file, stdout, blackhole, otlp_http; did you mean `otlp_http`?)",
        f"tailrace: configuration error: {f}:11: $.batch.max_age: expected a duration like 250ms, 5s or 1m, got 'soon'",
        f"tailrace: configuration error: {f}:12: $.batch.max_records: Expected `int`, got `str`: 'lots'",
        f"tailrace: configuration error: {f}:13: $: Object contains unknown field `state_dirr` "
        "(did you mean `state_dir`?)",
    ]


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_an_input_that_would_read_what_tailrace_writes_is_refused(tmp_path: Path, command: str) -> None:
    """An input whose globs match the file output (it would ship its own output, then that
    again: a loop that fills the disk) or the state directory's files is refused, matched as
    the core matches (`*` stays in its directory; excludes apply). Nothing is started."""
    out, state = tmp_path / "out", tmp_path / "state"

    def cfg(paths: list[str], exclude: list[str] | None = None) -> str:
        return (f"state_dir: {state}\ninputs: [{{paths: {paths}, exclude: {exclude or []}}}]\n"
                f"outputs: [{{type: file, path: {out}/logs.jsonl}}]\n")

    r = check_config(tmp_path, cfg([f"{out}/*"]), command)
    assert (r.returncode, r.stderr.splitlines()) == (2, [
        f"tailrace: configuration error: {tmp_path}/c.yaml:2: $.inputs[0].paths: would read {out}/logs.jsonl "
        "($.outputs[0].path), which tailrace writes: it would ship what it ships, again and again (exclude it, or "
        "write elsewhere)"])
    assert not out.exists() and not state.exists()
    r = check_config(tmp_path, cfg([f"{tmp_path}/**"], [f"{out}/*"]), command)
    assert r.returncode == 2 and f"would read {state}/checkpoints.json ($.state_dir)" in r.stderr, r.stderr
    spool = (f"state_dir: {state}\ninputs: [{{paths: ['{state}/spool/up/*']}}]\n"
             "outputs: [{type: otlp_http, name: up, endpoint: 'http://127.0.0.1:4318'}]\n")
    r = check_config(tmp_path, spool, command)
    assert r.returncode == 2 and f"would read {state}/spool/up/00000000000000000001.seg ($.state_dir)" in r.stderr
    # Excluded, or `*` not reaching into the directory below: accepted.
    r = check_config(tmp_path, cfg([f"{tmp_path}/**"], [f"{out}/*", f"{state}/**"]), "check-config")
    assert r.returncode == 0, r.stderr
    r = check_config(tmp_path, cfg([f"{tmp_path}/*"]), "check-config")
    assert r.returncode == 0, r.stderr


def test_check_config_builds_what_run_builds(tmp_path: Path) -> None:
    """What `run` would refuse at start-up, check-config refuses too (each line names the key):
    a glob the core cannot compile, a CA file that is not PEM, a state_dir under /proc, a file
    output whose directory cannot exist."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    text = (
        f"state_dir: /proc/tailrace\n"
        f"inputs: [{{paths: ['{tmp_path}/[a.log']}}]\n"
        f"outputs: [{{type: otlp_http, endpoint: 'https://x:4318', tls: {{ca_file: '{ca}'}}}},"
        " {type: file, path: /etc/passwd/out.jsonl}]\n"
    )
    r = check_config(tmp_path, text)
    assert r.returncode == 2, r.stdout
    f = tmp_path / "c.yaml"
    located = [ln.removeprefix(f"tailrace: configuration error: {f}:").split(": ")[:2] for ln in r.stderr.splitlines()]
    assert located == [["3", "$.outputs[0].tls.ca_file"], ["3", "$.outputs[1].path"], ["2", "$.inputs[0].paths[0]"],
                       ["1", "$.state_dir"]], r.stderr
    assert "Traceback" not in r.stderr


def test_run_finds_its_configuration_or_says_where_it_looked(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "TAILRACE_CONFIG"}
    assert not Path("/etc/tailrace/tailrace.yaml").exists()  # this machine has none
    r = subprocess.run([sys.executable, "-m", "collector.cli", "run"], capture_output=True, text=True, cwd=tmp_path,
                       env={**env, "PYTHONPATH": str(ROOT)}, timeout=60, check=False)
    assert r.returncode == 2
    assert "no configuration: none given (-c FILE), $TAILRACE_CONFIG is not set, and /etc/tailrace/tailrace.yaml" \
        in r.stderr
    # $TAILRACE_CONFIG, and -c for check-config as for run.
    f = tmp_path / "c.yaml"
    f.write_text(GOOD)
    for args, extra in ([["check-config"], {"TAILRACE_CONFIG": str(f)}], [["check-config", "-c", str(f)], {}]):
        r = subprocess.run([sys.executable, "-m", "collector.cli", *args], capture_output=True, text=True,
                           cwd=tmp_path, env={**env, **extra, "PYTHONPATH": str(ROOT)}, timeout=60, check=False)
        assert (r.returncode, r.stdout) == (0, f"{f}: ok (1 inputs, 1 outputs)\n"), r.stderr


def test_version_names_the_build() -> None:
    import re

    r = subprocess.run([sys.executable, "-m", "collector.cli", "--version"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60, check=False)
    assert r.returncode == 0
    assert re.fullmatch(r"tailrace \S+ \(core \S+, commit ([0-9a-f]{12}(\+changes)?|unknown), rustc \S+.*\)\n",
                        r.stdout), r.stdout


@pytest.mark.parametrize("command", ["run", "demo", "check-config", "doctor", "profile", "top", "bench", "completion"])
def test_every_command_s_help_has_an_example(command: str) -> None:
    r = subprocess.run([sys.executable, "-m", "collector.cli", command, "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60, check=False)
    assert r.returncode == 0
    example = r.stdout.split("example:\n", 1)[1].splitlines()[0].strip()
    assert example.startswith("tailrace ") and command in example, r.stdout


def test_exit_codes_usage_64_configuration_2_with_one_line_and_a_held_state_dir_noted(tmp_path: Path) -> None:
    import fcntl
    import os

    r = subprocess.run([sys.executable, "-m", "collector.cli", "frob"], capture_output=True, text=True, cwd=ROOT,
                       timeout=60, check=False)
    assert r.returncode == 64 and "tailrace: usage error: argument command: invalid choice: 'frob'" in r.stderr
    # What only start-up finds (the file output's path is a directory): one line, exit 2.
    (tmp_path / "out").mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    text = (f"state_dir: {tmp_path}/state\ninputs: [{{paths: ['{logs}/*.log']}}]\n"
            f"outputs: [{{type: file, path: '{tmp_path}/out'}}]\nadmin: {{enabled: false}}\n")
    r = check_config(tmp_path, text, "run")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("tailrace: configuration error: cannot start: [Errno 21]")
    assert "Traceback" not in r.stderr
    # check-config says (without failing) that a running tailrace holds the state_dir.
    (tmp_path / "state").mkdir(exist_ok=True)
    fd = os.open(tmp_path / "state" / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"pid 4242")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = check_config(tmp_path, text.replace(f"'{tmp_path}/out'", f"'{tmp_path}/out/x.jsonl'"))
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    assert f"note: {tmp_path}/state is held by a running tailrace (pid 4242)" in r.stdout


def test_shell_completion_completes_commands_and_options() -> None:
    import shutil

    bash = shutil.which("bash")
    assert bash is not None
    script = subprocess.run([sys.executable, "-m", "collector.cli", "completion", "bash"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60, check=True).stdout
    probe = (script + "\nCOMP_WORDS=(tailrace ch); COMP_CWORD=1; _tailrace; echo \"${COMPREPLY[@]}\""
             "\nCOMP_WORDS=(tailrace run --log-); COMP_CWORD=2; _tailrace; echo \"${COMPREPLY[@]}\"")
    out = subprocess.run([bash, "-c", probe], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.splitlines() == ["check-config", "--log-format --log-level"]
    zsh = subprocess.run([sys.executable, "-m", "collector.cli", "completion", "zsh"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60, check=True).stdout
    assert zsh.startswith("autoload -U +X bashcompinit && bashcompinit\n") and zsh.endswith(script)
