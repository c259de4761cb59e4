"""What the deploy/ tests share: paths, external tools, real `mtserve serve` and nginx processes, PromQL and
`mtserve serve` settings as the server itself reads them.

Imported by name from the test modules of this folder (pytest puts the folder on sys.path).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from mtserve.server import errors
from mtserve.server.config import _FLAGS, ServerConfig, build_serve_parser, config_from_args
from mtserve.server.metrics import Metrics, code_label

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
#: The debootstrap base deploy/offline/build-image.sh makes (and the stand-in images of tests/deploy/images).
BASE_IMAGE = "mtserve-base:bookworm-python3.11"
#: Seconds a replica may take to load the bundled model and report SERVING (one free core, shared).
STARTUP_SECONDS = 120.0


# -- external tools -------------------------------------------------------------------------------------


def require_tool(name: str, package: str) -> str:
    """The path of `name`; skips the test when it is missing, but fails it under CI (CI=true installs it).

    Also looks in the sbin directories, where Debian puts nginx and which a non-root PATH lacks.
    """
    path = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (Debian package {package}); CI must run this test")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


def docker_cli() -> str:
    """A docker CLI whose daemon answers; skips the test without one, fails it under CI (.ci/run starts one)."""
    path = shutil.which("docker")
    answer = run([path, "info", "-f", "{{.ServerVersion}}"], timeout=30) if path else None
    if answer is None or answer.returncode != 0:
        why = "no docker CLI" if path is None else f"no Docker daemon answers: {answer.stderr.strip()[:300]}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI must run this test (.ci/run starts dockerd)")
        pytest.skip(why)
    return path


def run(command: Sequence[str], timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (for processes that take it on the command line)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], what: str, timeout: float, describe: Callable[[], str]) -> None:
    """Poll `predicate` until it holds; fail naming `what` (and `describe()`, e.g. a log) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{describe()}")
        time.sleep(0.05)


def log_tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return f"--- {path.name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- mtserve serve as a process -------------------------------------------------------------------------


@dataclass
class Replica:
    """A `mtserve serve` subprocess of the bundled default model on 127.0.0.1."""

    port: int
    metrics_port: int
    log_path: Path
    #: A loopback address: 127.0.0.2 and 127.0.0.3 let two replicas share one port, as behind one DNS name.
    host: str = "127.0.0.1"
    #: More `mtserve serve` flags (small limits, to provoke rejections).
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] = field(init=False)

    def start(self) -> None:
        command = [
            sys.executable, "-m", "mtserve.server.cli", "serve", "--host", self.host, "--port", str(self.port),
            "--metrics-port", str(self.metrics_port), "--device", "cpu", "--threads", "1", "--grace-seconds", "5",
            *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            # No MTSERVE_* from the caller's environment: the flags above are the whole configuration.
            env = {k: v for k, v in env.items() if not k.startswith("MTSERVE_")}
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def serving(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"mtserve serve exited with {self.process.returncode}\n{log_tail(self.log_path)}")
        with grpc.insecure_channel(self.address) as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def wait_serving(self) -> None:
        wait_until(self.serving, f"mtserve serve on {self.address} to report SERVING", STARTUP_SECONDS,
                   lambda: log_tail(self.log_path))

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """The replica's /metrics, parsed: (sample name, labels) -> value."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode("utf-8")
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def calls_ok(self) -> float:
        """Translation calls this replica finished with status OK (all models)."""
        return sum(value for (name, labels), value in self.scrape().items()
                   if name == "mtserve_request_duration_seconds_count" and ("code", "OK") in labels)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (the server drains), then wait for the exit; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"mtserve serve did not exit {timeout:.0f}s after SIGTERM\n{log_tail(self.log_path)}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def free_port_on(hosts: Sequence[str]) -> int:
    """A TCP port free on every one of `hosts` a moment ago."""
    for _ in range(100):
        port = free_port()
        with contextlib.ExitStack() as stack:
            try:
                for host in hosts:
                    stack.enter_context(socket.socket()).bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


def start_replicas(count: int, directory: Path, hosts: Sequence[str] | None = None) -> list[Replica]:
    """`count` replicas, started together (loading overlaps) and each SERVING when this returns.

    With `hosts` (one loopback address each), they all listen on the same port.
    """
    shared_port = free_port_on(hosts) if hosts is not None else None
    replicas = []
    try:
        for i in range(count):
            host = hosts[i] if hosts is not None else "127.0.0.1"
            replica = Replica(shared_port or free_port(), free_port(), directory / f"mtserve-{i + 1}.log", host)
            replica.start()
            replicas.append(replica)
        for replica in replicas:
            replica.wait_serving()
    except BaseException:
        for replica in replicas:
            replica.kill()
        raise
    return replicas


# -- DNS ------------------------------------------------------------------------------------------------


class DnsServer:
    """A DNS server on 127.0.0.1 (UDP) that answers A queries from `records`, as Docker's embedded DNS does.

    `records` maps a name to its addresses and may change while it runs (a replica stops: its address
    goes); a name it lacks gets NXDOMAIN, any other query type an empty answer. Just enough of RFC 1035
    for a resolver such as nginx's, not a general server.
    """

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.queries: list[str] = []
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.port = int(self.socket.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="dns", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                query, client = self.socket.recvfrom(512)
            except OSError:  # closed
                return
            reply = self.answer(query)
            if reply is not None:
                self.socket.sendto(reply, client)

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        labels, at = [], 12
        while at < len(query) and query[at] != 0:
            length = query[at]
            labels.append(query[at + 1:at + 1 + length].decode("ascii", "replace").lower())
            at += 1 + length
        question_end = at + 5  # the zero byte, QTYPE, QCLASS
        if question_end > len(query):
            return None
        name = ".".join(labels)
        qtype = struct.unpack(">H", query[at + 1:at + 3])[0]
        self.queries.append(name)
        addresses = self.records.get(name)
        rcode = 3 if addresses is None else 0  # NXDOMAIN
        answers = [a for a in (addresses or []) if qtype == 1]  # type A
        # QR (a response), the query's RD, RA; one question, the answers; no authority, no additional.
        flags = 0x8080 | (query[2] & 0x01) << 8 | rcode
        header = query[:2] + struct.pack(">HHHHH", flags, 1, len(answers), 0, 0)
        # Each answer names the question by a pointer to offset 12; class IN, a TTL of 1 s, 4 bytes.
        records = b"".join(struct.pack(">HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(a) for a in answers)
        return header + query[12:question_end] + records

    def close(self) -> None:
        self.socket.close()
        self._thread.join(5)


# -- nginx ----------------------------------------------------------------------------------------------

#: The one change the tests make to deploy/nginx/mtserve.conf: its listen port.
NGINX_LISTEN = re.compile(r"(?m)^(\s*listen\s+)50051(\s+http2\s*;)")


def static_replicas(addresses: Iterable[str]) -> str:
    """deploy/nginx/replicas-static.conf with its example servers replaced by `addresses` (same parameters)."""
    shipped = (DEPLOY / "nginx" / "replicas-static.conf").read_text()
    servers = re.findall(r"^(\s*server\s+)\S+(.*;)$", shipped, re.M)
    assert len(set(servers)) == 1, f"the shipped servers differ in more than their address: {servers}"
    indent, parameters = servers[0]
    lines = "".join(f"{indent}{address}{parameters}\n" for address in addresses)
    text, replaced = re.subn(r"(?m)(^\s*server\s+\S+.*;\n)+", lambda _: lines, shipped)
    assert replaced == 1, "replicas-static.conf must list its servers together"
    return text


def dns_replicas(resolver: str, port: int) -> str:
    """deploy/nginx/replicas-dns.conf asking `resolver` (host:port) instead of Docker's DNS, for replicas on
    `port`: the two values the compose stack fixes, and nothing else changed."""
    shipped = (DEPLOY / "nginx" / "replicas-dns.conf").read_text()
    text, resolvers = re.subn(r"(?m)^(resolver\s+)127\.0\.0\.11(\s)", rf"\g<1>{resolver}\g<2>", shipped)
    text, names = re.subn(r"(?m)^(\s*default\s+)mtserve-replicas:50051;", rf"\g<1>{REPLICAS_NAME}:{port};", text)
    assert resolvers == 1 and names == 1, "replicas-dns.conf: expected `resolver 127.0.0.11` and one default"
    return text


#: The name the compose stack gives every replica (a network alias) and replicas-dns.conf resolves.
REPLICAS_NAME = "mtserve-replicas"


class Nginx:
    """The real nginx binary with deploy/nginx/mtserve.conf, the given replicas file and a free port.

    Everything lives under `root`: a main config that includes mtserve.conf (as the stock nginx image's
    main config includes conf.d/*.conf), pid, logs and temp dirs, so the system's nginx (service or not)
    is never involved. `replicas` (see static_replicas, dns_replicas) becomes mtserve-replicas.conf, next to
    the main config, where the compose stack mounts its own.
    """

    def __init__(self, binary: str, root: Path, replicas: str) -> None:
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.conf_dir = root / "conf"
        self.conf_dir.mkdir(parents=True)
        (root / "temp").mkdir()
        self.error_log = root / "error.log"
        self.access_log = root / "access.log"
        site, replaced = NGINX_LISTEN.subn(rf"\g<1>127.0.0.1:{self.port}\g<2>",
                                           (DEPLOY / "nginx" / "mtserve.conf").read_text())
        assert replaced == 1, "deploy/nginx/mtserve.conf must have exactly one `listen 50051 http2;`"
        (self.conf_dir / "mtserve.conf").write_text(site)
        (self.conf_dir / "mtserve-replicas.conf").write_text(replicas)
        # The master runs as whoever runs the tests; as root its workers would drop to `nobody`, who
        # cannot enter pytest's 0700 temp dirs.
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "".join(f"    {kind}_temp_path {root}/temp/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.conf_dir / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\n{user}pid {root}/nginx.pid;\nerror_log {self.error_log} info;\n"
            f"events {{\n    worker_connections 256;\n}}\nhttp {{\n{temp}    include mtserve.conf;\n}}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [self.binary, "-p", f"{self.root}/", "-c", str(self.conf_dir / "nginx.conf")]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def logs(self) -> str:
        return log_tail(self.error_log) + "\n" + log_tail(self.access_log)

    def start(self) -> None:
        checked = run([*self.command, "-t"])
        assert checked.returncode == 0, f"nginx -t rejected the config:\n{checked.stdout}{checked.stderr}"
        with open(self.access_log, "ab") as out:
            # Its own session: the master and its workers form one process group, ours to signal.
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"nginx exited with {self.process.returncode}\n{self.logs()}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, f"nginx to listen on {self.address}", 30, self.logs)

    def stop(self) -> None:
        """Fast shutdown (SIGTERM to the master); SIGKILL to its process group if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(15)


def nginx_directive_value(directive: str, name: str) -> str:
    """The quoted value of `directive name "value";` in deploy/nginx/mtserve.conf (e.g. an add_header)."""
    text = (DEPLOY / "nginx" / "mtserve.conf").read_text()
    found = re.findall(rf'^\s*{re.escape(directive)}\s+{re.escape(name)}\s+"([^"]*)"', text, flags=re.M)
    assert len(found) == 1, f"expected one `{directive} {name} \"...\"` in mtserve.conf, found {found}"
    return found[0]


# -- mtserve serve settings ---------------------------------------------------------------------------


def serve_config(args: Sequence[str], env: Mapping[str, object], where: str) -> ServerConfig:
    """The ServerConfig that `mtserve serve ARGS` with environment `env` would run with.

    Fails the test for a flag or an MTSERVE_* variable that `mtserve serve` does not have (the server
    would refuse the flag, and silently ignore the variable), or a value it rejects.
    """
    known_env = {spec.env for spec in _FLAGS}
    unknown = sorted(name for name in env if name.startswith("MTSERVE_") and name not in known_env)
    assert not unknown, f"{where}: {unknown} are not mtserve serve settings (known: {sorted(known_env)})"
    parser = build_serve_parser()
    try:
        namespace = parser.parse_args(list(args))
    except SystemExit:
        pytest.fail(f"{where}: `mtserve serve {' '.join(args)}` is rejected by the server's own parser")
    try:
        return config_from_args(namespace, {name: str(value) for name, value in env.items()})
    except ValueError as e:
        pytest.fail(f"{where}: mtserve serve rejects its settings: {e}")


# -- metric names and PromQL ----------------------------------------------------------------------------

#: Labels Prometheus itself attaches to every scraped series, and the bucket bound of histograms.
TARGET_LABELS = frozenset({"job", "instance"})


def declared_metrics() -> dict[str, frozenset[str]]:
    """Every series name the server can export (server/metrics.py) -> its label names.

    Histograms give name_bucket (with le), name_count and name_sum; counters name_total; Info name_info;
    plus Prometheus' own `up`.
    """
    metrics = Metrics()
    # The label names of each collector; prometheus_client keeps them only on the collector object.
    labels_of = {
        family.name: frozenset(collector._labelnames)
        for collector in vars(metrics).values() if isinstance(collector, MetricWrapperBase)
        for family in collector.describe()
    }
    names: dict[str, frozenset[str]] = {"up": frozenset()}
    for family in metrics.registry.collect():
        labels = labels_of[family.name]
        if family.type == "histogram":
            names[f"{family.name}_bucket"] = labels | {"le"}
            names[f"{family.name}_count"] = labels
            names[f"{family.name}_sum"] = labels
        elif family.type == "counter":
            names[f"{family.name}_total"] = labels
        elif family.type == "info":
            names[f"{family.name}_info"] = labels
        else:
            names[family.name] = labels
    return names


_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                       "offset", "bool", "inf", "nan"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, aggregations, keywords or labels)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])", text):
        if text[match.end():].lstrip().startswith("(") or match.group(1).lower() in _KEYWORDS:
            continue  # a function or aggregation call, or an operator
        names.add(match.group(1))
    return names


def promql_label_names(expr: str) -> set[str]:
    """The label names an expression matches on or groups by."""
    text = _STRING.sub('""', expr)
    labels = set()
    for matchers in _MATCHERS.findall(text):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    for grouping in _GROUPING.findall(text):
        labels |= {label.strip() for label in grouping.split(",") if label.strip()}
    return labels


def promtool_check_expressions(
    promtool: str, expressions: Mapping[str, str], directory: Path
) -> subprocess.CompletedProcess[str]:
    """Run every expression through Prometheus' own parser: `promtool check rules` on a temporary rules file
    that records each of them."""
    rules = [{"record": f"check:{re.sub(r'[^A-Za-z0-9_]', '_', name)}", "expr": expr}
             for name, expr in expressions.items()]
    path = directory / "expressions.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "expressions", "rules": rules}]}, sort_keys=False))
    return run([promtool, "check", "rules", str(path)])


def known_label_values() -> dict[str, frozenset[str]]:
    """The values the server gives its enumerated labels: status codes (code, grpc_code) and reasons."""
    codes = frozenset(code_label(code) for code in grpc.StatusCode)
    reasons = frozenset(
        cls.reason for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.MtserveError)
    )
    return {"code": codes, "grpc_code": codes, "reason": reasons}


def promql_label_values(expr: str) -> dict[str, set[str]]:
    """label -> the literal values an expression compares it with (alternatives of a regex split on |)."""
    values: dict[str, set[str]] = {}
    for matchers in _MATCHERS.findall(expr):
        for label, op, value in re.findall(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', matchers):
            alternatives = value.split("|") if op in ("=~", "!~") else [value]
            values.setdefault(label, set()).update(alternatives)
    return values


# -- the Dockerfile -------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DEPLOY / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                            if not line.lstrip().startswith("#")))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def healthcheck_command() -> list[str]:
    """The exec-form command of the Dockerfile's HEALTHCHECK."""
    (arguments,) = [args for keyword, args in dockerfile_instructions() if keyword == "HEALTHCHECK"]
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", arguments)
    assert match, f"HEALTHCHECK must use the exec form CMD [...]: {arguments}"
    command = json.loads(match.group(1))
    assert isinstance(command, list) and all(isinstance(part, str) for part in command), command
    return command
