"""Configuration: a YAML file decoded into msgspec structs. Unknown keys, wrong types and bad
values are errors that name the key (`$.inputs[0].paths`); `${ENV_VAR}` (or `${ENV_VAR:-default}`)
is expanded in string values; durations are `250ms`, `5s`, `1m`, `2h`; sizes are `64KiB`,
`1MiB`, `1GiB` or integer bytes. These names are the stable contract of tailrace."""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

# The demo's embedded example: configs/local.yaml, carried in the package (a test keeps the two
# equal) so an installed wheel has it without a top-level `configs` directory in site-packages.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "local.yaml"


class ConfigError(Exception):
    """A configuration that cannot run; the message names the key."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_UNITS_S = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_UNITS_B = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3}
# `${VAR}`, `${env:VAR}`, `${VAR:-default}`, `${VAR:?message}`, and `$$` for a literal `$`.
_ENV = re.compile(r"\$\$|\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}")


class Duration(float):
    """Seconds, written `250ms`, `5s`, `1m`, `2h` or a bare number of seconds. Decoded once,
    when the configuration is read; everything downstream sees a float."""


class Size(int):
    """Bytes, written `64KiB`, `1MiB`, `1GiB`, `64KB` or an integer."""


class Coalesce(float):
    """`auto` or a duration. `auto` is stored as infinity (written files wait as long as their
    batch allows: the open batch's `max_age`, bounded by the inotify queue) and compares equal
    to the string "auto"."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return other == "auto" and math.isinf(self)
        return float(self) == other

    __hash__ = float.__hash__

    def __repr__(self) -> str:
        return "auto" if math.isinf(self) else float.__repr__(self)


AUTO = Coalesce(math.inf)


def duration(value: object, key: str = "") -> Duration:
    """Seconds from `250ms`, `5s`, `1m`, `2h`, or a bare number of seconds."""
    key = f"{key}: " if key else ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{key}expected a duration like 250ms, 5s or 1m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"{key}expected a duration like 250ms, 5s or 1m, got {value!r}")
        seconds = float(m.group(1)) * _UNITS_S[m.group(2)]
    if seconds < 0:
        raise ValueError(f"{key}must not be negative")
    return Duration(seconds)


def size(value: object, key: str = "") -> Size:
    """Bytes from `64KiB`, `1MiB`, or an integer."""
    key = f"{key}: " if key else ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{key}expected a size like 64KiB or 1MiB, got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"{key}expected a size like 64KiB, 1MiB or bytes, got {value!r}")
        n = int(m.group(1)) * _UNITS_B[m.group(2)]
    if n <= 0:
        raise ValueError(f"{key}must be positive")
    return Size(n)


def _dec_hook(typ: type, value: Any) -> Any:
    """msgspec's hook for the unit types: the error becomes msgspec's, with the key's path."""
    if typ is Duration:
        return duration(value)
    if typ is Size:
        return size(value)
    if typ is Coalesce:
        return AUTO if value == "auto" else Coalesce(duration(value, "expected auto or a duration like 5ms"))
    raise NotImplementedError(f"no decoder for {typ}")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class InputConfig(_Strict):
    paths: list[str]
    name: str = ""
    exclude: list[str] = []
    # Directories (besides each glob's fixed directory part) that matched paths may resolve
    # into through symlinks; a file resolving anywhere else is not read.
    allowed_roots: list[str] = []
    watch: Literal["auto", "inotify", "poll", "naive"] = "auto"
    poll_interval: Duration = duration("250ms")
    # Safety rescan of the globs: 1s when polling, 60s when inotify finds new files anyway.
    rescan_interval: Duration | None = None
    # How long written files wait before they are read: `auto` (until the open batch would
    # close, bounded by the inotify queue) or a duration.
    coalesce: Coalesce = AUTO
    read_from: Literal["beginning", "end"] = "beginning"
    format: Literal["plain", "cri", "docker", "auto"] = "plain"
    max_line_bytes: Size = size("1MiB")
    read_budget: Size = size("256KiB")
    partial_flush: Duration = duration("5s")
    rotate_wait: Duration = duration("5s")
    close_inactive: Duration = duration("5m")
    # The file attributes of each record (the OpenTelemetry Collector's filelog names): the
    # semantic conventions recommend `log.file.name` and make `log.file.path` opt-in.
    include_file_name: bool = True
    include_file_path: bool = False

    def __post_init__(self) -> None:
        if not self.paths or not all(isinstance(p, str) and p.strip() for p in self.paths):
            raise ValueError("paths: must list at least one glob")
        if self.rescan_interval is None:
            self.rescan_interval = duration("1s" if self.watch == "poll" else "60s")


class BatchConfig(_Strict):
    # 2 MiB of uncompressed protobuf: one request per `max_age` at 20,000 lines/s of 200 bytes
    # (each request costs CPU), under the OTLP/gRPC default limit of 4 MiB.
    max_bytes: Size = size("2MiB")
    max_records: int = 10_000
    max_age: Duration = duration("200ms")

    def __post_init__(self) -> None:
        if self.max_records <= 0:
            raise ValueError("max_records: must be positive")


class MemoryConfig(_Strict):
    # Bytes all files together may hold for lines not finished yet (a partial line waiting
    # for its newline, container pieces waiting for their end); past it the largest holders
    # emit what they hold as pieces flagged `tailrace.split`, never dropping a byte. 48 MiB
    # keeps tailrace in a 256 MiB pod with room for batches, the spool's buffers and Python.
    max_pending_bytes: Size = size("48MiB")


class _Output(_Strict, tag_field="type", kw_only=True):
    name: str = ""


class FileOutput(_Output, tag="file", kw_only=True):
    path: str


class StdoutOutput(_Output, tag="stdout"):
    pass


class BlackholeOutput(_Output, tag="blackhole"):
    pass


class TlsConfig(_Strict):
    """Server verification is on by default; `ca_file` replaces the system roots."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file: give both or neither")


class RetryConfig(_Strict):
    """Exponential backoff with full jitter between `initial` and `max`; `Retry-After` wins.
    401/403/404 mean misconfiguration: retried every `misconfigured`, loudly."""

    initial: Duration = duration("500ms")
    max: Duration = duration("30s")
    misconfigured: Duration = duration("60s")

    def __post_init__(self) -> None:
        if self.initial <= 0:
            raise ValueError("initial: must be positive")


class SpoolConfig(_Strict):
    """A batch an output could not deliver within `after` goes to `state_dir/spool/<output>`
    (fsynced, then counted as acknowledged) and is replayed in order until delivered."""

    enabled: bool = True
    after: Duration = duration("5s")
    max_bytes: Size = size("1GiB")
    warn_every: Duration = duration("30s")


class OtlpHttpOutput(_Output, tag="otlp_http", kw_only=True):
    """OTLP/HTTP protobuf. `endpoint` is a base URL (`/v1/logs` is added when it has no path)
    or the full URL of the logs endpoint."""

    endpoint: str
    compression: Literal["zstd", "gzip", "none"] = "zstd"
    compression_level: int | None = None  # zstd 1, gzip 6
    headers: dict[str, str] = {}
    # Header name → file holding its value (e.g. a rotating token), re-read when it changes.
    header_files: dict[str, str] = {}
    max_in_flight: int = 4
    timeout: Duration = duration("10s")
    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    spool: SpoolConfig = msgspec.field(default_factory=SpoolConfig)

    def __post_init__(self) -> None:
        from urllib.parse import urlsplit

        u = urlsplit(self.endpoint)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"endpoint: expected http://host:port or https://host:port, got {self.endpoint!r}")
        try:
            u.port  # noqa: B018 (validates the port)
        except ValueError:
            raise ValueError(f"endpoint: bad port in {self.endpoint!r}") from None
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight: must be at least 1")
        if self.timeout <= 0:
            raise ValueError("timeout: must be positive")
        for k in (*self.headers, *self.header_files):
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", k):
                raise ValueError(f"headers: {k!r} is not a valid header name")


OutputConfig = FileOutput | StdoutOutput | BlackholeOutput | OtlpHttpOutput


class ProfilerConfig(_Strict):
    """py-spy against tailrace itself: `duration` of sampling at `rate` Hz every `every`."""

    enabled: bool = True
    every: Duration = duration("5m")
    duration: Duration = duration("10s")
    rate: int = 50
    # Warn when more than this share of samples is in stat-family syscalls (with >= min_samples).
    threshold: float = 0.10
    # Warn when more than this share of samples is in any one other syscall (with >= min_samples,
    # and 10 samples of its own; the data path's reads and sends and the disk waits are not judged).
    syscall_threshold: float = 0.05
    min_samples: int = 200
    keep: int = 12

    def __post_init__(self) -> None:
        if self.duration < 1:
            raise ValueError("duration: at least 1s")
        if not 1 <= self.rate <= 1000:
            raise ValueError("rate: between 1 and 1000 (Hz)")
        if not 0 < self.threshold < 1:
            raise ValueError("threshold: a share between 0 and 1, like 0.10")
        if not 0 < self.syscall_threshold < 1:
            raise ValueError("syscall_threshold: a share between 0 and 1, like 0.05")
        if self.keep < 1:
            raise ValueError("keep: at least 1")


class AdminConfig(_Strict):
    """The admin HTTP endpoint: /healthz, /readyz, /metrics, /stats, /debug/profile/latest.svg."""

    enabled: bool = True
    address: str = "127.0.0.1:2020"

    def __post_init__(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"address: expected host:port, got {self.address!r}")


class TelemetryConfig(_Strict):
    """tailrace's own metrics pushed as OTLP/HTTP (the same series as /metrics), when
    `otlp_endpoint` is set (a base URL: `/v1/metrics` is added when it has no path)."""

    otlp_endpoint: str | None = None
    interval: Duration = duration("30s")
    headers: dict[str, str] = {}
    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("interval: must be positive")
        if self.otlp_endpoint is not None and not re.match(r"^https?://[^/]+", self.otlp_endpoint):
            raise ValueError(f"otlp_endpoint: expected http(s)://host:port, got {self.otlp_endpoint!r}")


class LogConfig(_Strict):
    level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"

    def __post_init__(self) -> None:
        if self.level == "warn":  # what Fluent Bit, Vector and the Collector call it
            self.level = "warning"


class Config(_Strict):
    inputs: list[InputConfig]
    outputs: list[OutputConfig]
    state_dir: str = "./state"
    batch: BatchConfig = msgspec.field(default_factory=BatchConfig)
    memory: MemoryConfig = msgspec.field(default_factory=MemoryConfig)
    checkpoint_interval: Duration = duration("1s")
    shutdown_grace: Duration = duration("10s")
    progress_interval: Duration = duration("5s")
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    profiler: ProfilerConfig = msgspec.field(default_factory=ProfilerConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("inputs: must list at least one input")
        if not self.outputs:
            raise ValueError("outputs: must list at least one output")
        names = set()
        for i, inp in enumerate(self.inputs):
            inp.name = inp.name or f"input{i}"
            if inp.name in names:
                raise ValueError(f"inputs[{i}].name: {inp.name!r} is used twice")
            names.add(inp.name)
        for i, out in enumerate(self.outputs):
            out.name = out.name or f"{type(out).__struct_config__.tag}{i}"


# Checkpoints of files not seen for this long are dropped when the file is written.
CHECKPOINT_FORGET_AFTER = Duration(7 * 86400.0)


class TailerOptions(msgspec.Struct, kw_only=True, frozen=True):
    """Everything the core's `Tailer` is told, built from the configuration by
    `tailer_options` (the core has no defaults of its own). Benchmarks and tests build their
    tailers through the same function, so they run what production runs."""

    name: str
    paths: list[str]
    exclude: list[str]
    allowed_roots: list[str]
    watch: str
    poll_interval: float
    rescan_interval: float
    read_from: str
    format: str
    max_line_bytes: int
    read_budget: int
    # The read buffer (one per tailer) and the batches ready before reading stops in a step
    # (backpressure): internals, not configuration keys.
    buffer_size: int = 64 * 1024
    max_ready_batches: int = 4
    partial_flush: float
    rotate_wait: float
    close_inactive: float
    batch_max_bytes: int
    batch_max_records: int
    batch_max_age: float
    host: str
    # `k8s.node.name` of every resource (the downward API's K8S_NODE_NAME), when set.
    node_name: str | None = None
    first_batch_id: int = 1
    encodings: list[str]
    compression: str | None
    compression_level: int
    # None: auto.
    coalesce: float | None
    outputs: int
    max_pending_bytes: int
    include_file_name: bool = True
    include_file_path: bool = False


def tailer_options(
    inp: InputConfig,
    cfg: Config,
    *,
    encodings: list[str],
    compression: tuple[str, int] | None,
    outputs: int,
    host: str,
    node_name: str | None = None,
) -> TailerOptions:
    """The options of `inp`'s tailer: what its outputs need (wire forms, the codec batches are
    compressed with as they close, how many acknowledge each batch) and the configuration."""
    assert inp.rescan_interval is not None  # set by InputConfig.__post_init__
    return TailerOptions(
        name=inp.name,
        paths=list(inp.paths),
        exclude=list(inp.exclude),
        allowed_roots=list(inp.allowed_roots),
        watch=inp.watch,
        poll_interval=float(inp.poll_interval),
        rescan_interval=float(inp.rescan_interval),
        read_from=inp.read_from,
        format=inp.format,
        max_line_bytes=int(inp.max_line_bytes),
        read_budget=int(inp.read_budget),
        partial_flush=float(inp.partial_flush),
        rotate_wait=float(inp.rotate_wait),
        close_inactive=float(inp.close_inactive),
        batch_max_bytes=int(cfg.batch.max_bytes),
        batch_max_records=cfg.batch.max_records,
        batch_max_age=float(cfg.batch.max_age),
        host=host,
        node_name=node_name,
        encodings=sorted(encodings),
        compression=compression[0] if compression else None,
        compression_level=compression[1] if compression else 0,
        coalesce=None if math.isinf(inp.coalesce) else float(inp.coalesce),
        outputs=outputs,
        max_pending_bytes=int(cfg.memory.max_pending_bytes),
        include_file_name=inp.include_file_name,
        include_file_path=inp.include_file_path,
    )


def _expand(node: Any, where: str) -> Any:
    """Environment references in string values, expanded as text. The text is then typed by
    its key (`parse` converts leniently: `${WORKERS:-8}` is the integer 8 where an integer goes,
    `true`/`false` where a boolean goes), never by how YAML 1.1 reads it: an API key `0123` stays
    `0123` where text goes (YAML 1.1: the octal 83), `on` stays `on` (a boolean), `1:30` is no
    number (YAML 1.1: 90). The OpenTelemetry Collector also keeps the original text for a
    string field."""
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, op, arg = m.group(1), m.group(2), m.group(3)
            value = os.environ.get(name)
            if op == ":-" and not value:
                value = arg
            if op == ":?" and not value:
                raise ConfigError(f"{where}: {arg or f'environment variable {name} is not set'} (${{{name}}})")
            if value is None:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            return value

        return _ENV.sub(sub, node)
    if isinstance(node, list):
        return [_expand(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {k: _expand(v, f"{where}.{k}") for k, v in node.items()}
    return node


def parse(text: str, source: str = "<config>") -> Config:
    """The configuration in `text`. Errors name the file, the line and the key
    (`FILE:LINE: $.inputs[0].watch: …`), with the allowed values and a near match where there is
    one; every input, output and section is checked, so one error does not hide the next."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error(e, source)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    line_of = _locate(text)
    try:
        raw = _expand(raw, "$")
    except ConfigError as e:
        path = str(e).split(":", 1)[0]
        raise ConfigError(f"{source}:{line_of(path)}: {e}") from None
    try:
        return msgspec.convert(raw, Config, dec_hook=_dec_hook, strict=False)
    except msgspec.ValidationError as first:
        errors = _every_error(raw) or [str(first)]
        raise ConfigError("\n".join(_describe(e, source, line_of, raw) for e in errors)) from None


def _yaml_error(e: yaml.YAMLError, source: str) -> str:
    """One line, `FILE:LINE:COLUMN: not valid YAML: what (while what)`, as every other error
    names its place (PyYAML's own text is several lines and says `<unicode string>`)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


# What each part is checked against when looking for every error (a valid rest around it).
_PROBE: dict[str, Any] = {"inputs": [{"paths": ["/"]}], "outputs": [{"type": "blackhole"}]}


def _every_error(raw: dict[str, Any]) -> list[str]:
    """Every error of every input, output and other section, each with its absolute path: a
    key found wrong is left out and the rest checked again, so one error does not hide the next."""
    out: list[str] = []

    def check(doc: dict[str, Any], where: str, drop: Any) -> None:
        """Check `doc`; after an error under `where` (a key of the item at `where`), `drop(key)`
        gives the doc without that key, checked again (at most 50 times)."""
        unknown_keys: list[str] = []
        dropped: set[str | None] = set()
        for _ in range(50):
            try:
                msgspec.convert(doc, Config, dec_hook=_dec_hook, strict=False)
                return
            except msgspec.ValidationError as e:
                missing = re.search(r"missing required field `([^`]+)`", str(e))
                if missing and (missing.group(1) in dropped
                                or difflib.get_close_matches(missing.group(1), unknown_keys, n=1)):
                    # Reported already: the key was there with a wrong value, or `pahts` was
                    # reported with `paths` as its near match. (Missing is judged after every
                    # key present, so no error of this item is left unsaid.)
                    return
                out.append(str(e))
                path = str(e).rpartition(" - at `")[2].rstrip("`")
                unknown = re.search(r"unknown field `([^`]+)`", str(e))
                if unknown:
                    unknown_keys.append(unknown.group(1))
                key = (unknown.group(1) if unknown and path == where
                       else m.group(1) if (m := re.match(re.escape(where) + r"\.([^.\[]+)", path)) else None)
                # (A wrong `type` says which struct to check against: nothing after it is judged.)
                nxt = drop(key) if key is not None and key != "type" else None
                if nxt is None:
                    return
                dropped.add(key)
                doc = nxt

    def without(value: Any, key: str) -> Any:
        return {k: v for k, v in value.items() if k != key} if isinstance(value, dict) and key in value else None

    for key in ("inputs", "outputs"):
        items = raw.get(key)
        if not isinstance(items, list) or not items:
            check({**_PROBE, key: items} if key in raw else {k: v for k, v in _PROBE.items() if k != key}, "", None)
            continue
        for i, item in enumerate(items):
            head = [*_PROBE[key] * i]  # valid items before it: its index holds
            current = [item]

            def drop_item(k: str, key: str = key, head: list[Any] = head, current: list[Any] = current) -> Any:
                smaller = without(current[0], k)
                if smaller is None:
                    return None
                current[0] = smaller
                return {**_PROBE, key: [*head, smaller]}

            check({**_PROBE, key: [*head, item]}, f"$.{key}[{i}]", drop_item)
    for key, value in raw.items():
        if key not in ("inputs", "outputs"):
            section = [value]

            def drop_section(k: str, key: str = key, section: list[Any] = section) -> Any:
                smaller = without(section[0], k)
                if smaller is None:
                    return None
                section[0] = smaller
                return {**_PROBE, key: smaller}

            check({**_PROBE, key: value}, f"$.{key}", drop_section)
    return out


def _steps(path: str) -> list[tuple[str, str]]:
    """A msgspec error path (`$.inputs[0].watch`) as its steps: `(key, "")` or `("", index)`."""
    return re.findall(r"\.([^.\[`]+)|\[(\d+)\]", path.removeprefix("$"))


def _locate(text: str) -> Any:
    """A function from a key's path (`$.inputs[0].watch`) to its line in `text` (the nearest
    enclosing one that exists; None when the text does not compose)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lambda path: None

    def line_of(path: str) -> int | None:
        node = root
        line = node.start_mark.line + 1 if node is not None else None
        for key, index in _steps(path):
            nxt = None
            if key and isinstance(node, yaml.MappingNode):
                nxt = next((k for k, _ in node.value if k.value == key), None)
                line = nxt.start_mark.line + 1 if nxt is not None else line
                nxt = next((v for k, v in node.value if k.value == key), None)
            elif index and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
                nxt = node.value[int(index)]
                line = nxt.start_mark.line + 1
            if nxt is None:
                break
            node = nxt
        return line

    return line_of


def _describe(error: str, source: str, line_of: Any, raw: Any = None) -> str:
    """`FILE:LINE: $.path: message`, with the allowed values and a near match where known, and
    the text given where text is not what goes (it may come from the environment: unseen)."""
    import difflib

    m = re.match(r"(?s)(.*) - at `(\$[^`]*)`$", error)
    what, path = (m.group(1), m.group(2)) if m else (error, "$")
    hint = ""
    if re.match(r"Expected `[^`]+`, got `str`$", what) and isinstance(given := _value_at(raw, path), str):
        hint = f": {given!r}"
    unknown = re.match(r"Object contains unknown field `([^`]+)`", what)
    bad = re.match(r"Invalid (?:enum )?value '([^']*)'", what)
    if unknown:
        names = sorted({f for t in _types_at(path) for f in _field_names(t)})
        near = difflib.get_close_matches(unknown.group(1), names, n=1)
        hint = f" (did you mean `{near[0]}`?)" if near else ""
        where = line_of(f"{path}.{unknown.group(1)}")
    else:
        where = line_of(path)
        if bad:
            allowed = _allowed_at(path)
            if allowed:
                near = difflib.get_close_matches(bad.group(1), allowed, n=1)
                hint = f" (one of: {', '.join(allowed)}" + (f"; did you mean `{near[0]}`?)" if near else ")")
    return f"{source}:{where}: {path}: {what}{hint}" if where else f"{source}: {path}: {what}{hint}"


def _value_at(raw: Any, path: str) -> Any:
    """The value at a msgspec error path (`$.inputs[0].paths[1]`) of the raw document, if any."""
    node = raw
    for name, index in _steps(path):
        try:
            node = node[name] if name else node[int(index)]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _types_at(path: str) -> list[Any]:
    """The schema types a path may name (a union of outputs: every member)."""
    import typing

    types: list[Any] = [Config]
    for key, _index in _steps(path):
        nxt: list[Any] = []
        for t in types:
            if key:
                if isinstance(t, type) and issubclass(t, msgspec.Struct):
                    hint = typing.get_type_hints(t).get(key)
                    if hint is not None:
                        nxt.extend(_members(hint))
            else:
                if typing.get_origin(t) is list:
                    nxt.extend(_members(typing.get_args(t)[0]))
        types = nxt
    return types


def _members(t: Any) -> list[Any]:
    import types as pytypes
    import typing

    if isinstance(t, pytypes.UnionType) or typing.get_origin(t) is typing.Union:
        return [m for a in typing.get_args(t) for m in _members(a) if a is not type(None)]
    return [t]


def _field_names(t: Any) -> list[str]:
    if isinstance(t, type) and issubclass(t, msgspec.Struct):
        return [f.name for f in msgspec.structs.fields(t)]
    return []


def _allowed_at(path: str) -> list[str]:
    """The values a Literal key (or an output's `type`) takes."""
    import typing

    if path.endswith(".type") and "outputs[" in path:
        return [m.__struct_config__.tag for m in _members(OutputConfig)]
    values: list[str] = []
    for t in _types_at(path):
        if typing.get_origin(t) is Literal:
            values.extend(str(a) for a in typing.get_args(t))
    return values


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    return parse(text, str(p))


def check(cfg: Config) -> list[str]:
    """What this build cannot run yet, as errors naming the key (empty when runnable)."""
    problems = []
    names = [o.name for o in cfg.outputs]
    for i, out in enumerate(cfg.outputs):
        if names.count(out.name) > 1:
            problems.append(f"$.outputs[{i}].name: {out.name!r} is used twice")
        if isinstance(out, OtlpHttpOutput):
            for key, path in [("tls.ca_file", out.tls.ca_file), ("tls.cert_file", out.tls.cert_file),
                              ("tls.key_file", out.tls.key_file), *(
                                  (f"header_files.{h}", f) for h, f in out.header_files.items())]:
                if path is not None and not os.access(path, os.R_OK):
                    problems.append(f"$.outputs[{i}].{key}: cannot read {path}")
            problems.extend(_tls_problems(f"$.outputs[{i}].tls", out.tls))
        if isinstance(out, FileOutput) and not _creatable(os.path.dirname(_abs(out.path))):
            problems.append(f"$.outputs[{i}].path: cannot write {out.path!r} (its directory is not writable)")
    # What tailrace writes, which no input may read: it would ship it, then what it wrote of
    # that, and so on (the output file), or ship its own state.
    own = [(f"$.outputs[{i}].path", _abs(o.path)) for i, o in enumerate(cfg.outputs) if isinstance(o, FileOutput)]
    from collector._native import CHECKPOINT_FILES
    from collector.flow.spool import segment_name, spool_dir

    state = _abs(cfg.state_dir)
    own += [("$.state_dir", os.path.join(state, n)) for n in CHECKPOINT_FILES]
    own += [("$.state_dir", str(spool_dir(state, o.name) / segment_name(1)))
            for o in cfg.outputs if isinstance(o, OtlpHttpOutput)]
    for i, inp in enumerate(cfg.inputs):
        from collector._native import check_globs, glob_matches

        globs = check_globs(inp.paths, inp.exclude)
        for problem in globs:
            problems.append(f"$.inputs[{i}].{problem}")
        for key, path in [] if globs else own:
            if glob_matches(inp.paths, inp.exclude, path):
                problems.append(f"$.inputs[{i}].paths: would read {path} ({key}), which tailrace writes: it would "
                                "ship what it ships, again and again (exclude it, or write elsewhere)")
                break
    if "\0" in cfg.state_dir or os.path.realpath(cfg.state_dir).startswith(("/proc/", "/sys/")) \
            or not _creatable(cfg.state_dir):
        problems.append(f"$.state_dir: {cfg.state_dir!r} cannot be created or written")
    return problems


def located(source: str, problems: list[str]) -> list[str]:
    """`check` problems (`$.path: message`) as `FILE:LINE: $.path: message`."""
    try:
        line_of = _locate(Path(source).read_text())
    except OSError:
        return [f"{source}: {p}" for p in problems]
    out = []
    for p in problems:
        line = line_of(p.split(":", 1)[0])
        out.append(f"{source}:{line}: {p}" if line else f"{source}: {p}")
    return out


def _abs(path: str) -> str:
    return os.path.abspath(path.replace("\0", ""))


def _creatable(directory: str) -> bool:
    """`directory` exists and is writable, or could be created (its nearest existing parent is)."""
    if "\0" in directory:
        return False
    d = os.path.abspath(directory)
    while not os.path.exists(d):
        parent = os.path.dirname(d)
        if parent == d:
            return False
        d = parent
    return os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK)


def _tls_problems(where: str, tls: TlsConfig) -> list[str]:
    """The TLS files load as `run` loads them (PEM, a key matching its certificate)."""
    import ssl

    ctx = ssl.create_default_context()
    problems = []
    if tls.ca_file and os.access(tls.ca_file, os.R_OK):
        try:
            ctx.load_verify_locations(tls.ca_file)
        except (ssl.SSLError, ValueError) as e:
            problems.append(f"{where}.ca_file: {tls.ca_file} is not a PEM certificate bundle ({e})")
    if tls.cert_file and os.access(tls.cert_file, os.R_OK):
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, ValueError, OSError) as e:
            problems.append(f"{where}.cert_file: {tls.cert_file} (with its key) does not load ({e})")
    return problems


def warnings(cfg: Config) -> list[str]:
    """Runnable, but probably not what a production configuration wants."""
    return [
        f"$.inputs[{i}].watch: naive reproduces Fluent Bit's fstat-heavy event path on purpose "
        "(for benchmarks and the regression guard); use auto in production"
        for i, inp in enumerate(cfg.inputs)
        if inp.watch == "naive"
    ]
