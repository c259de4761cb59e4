"""The real Prometheus, with deploy/prometheus (its scrape job and alerts.yml), scraping a live `mtserve serve`:
every dashboard query and every alert expression returns data from the series the server really exports.

Traffic covers what the panels and alerts look at: successful unary and streamed calls, a refused argument,
a call rejected because the queue is full (a replica started with a small queue) and a call whose deadline
passes. Grafana's variables are given the values "All" gives them. Prometheus scrapes every second here
(15 s in deploy/), so the test needs seconds, not minutes.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _deploy_support import DEPLOY, Replica, free_port, log_tail, require_tool, wait_until

from mtserve.client import TranslationClient, TranslationError

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mtserve.json"
#: Grafana's variables, as the dashboard's "All" (allValue .*) and the job it finds give them; the rate
#: interval covers the whole test's traffic at a 1 s scrape.
VARIABLES = {"$job": "mtserve", "$model": ".*", "$instance": ".*", "$__rate_interval": "2m"}
#: Panels that have no data on this replica by design, and why.
NO_DATA_HERE = {"GPU memory allocated": "a CPU replica exports no GPU memory series"}
QUEUE = 32
LONG_TEXT = ("Das ist ein langer Satz mit vielen Wörtern, der eine Weile braucht, weil er immer weiter geht und "
             "nicht aufhört, bis alle Wörter gesagt sind.")


class Prometheus:
    def __init__(self, binary: str, root: Path, replica: Replica) -> None:
        self.port = free_port()
        self.root = root
        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(DEPLOY / "prometheus" / path) for path in config["rule_files"]]
        for job in config["scrape_configs"]:
            target = f"127.0.0.1:{replica.metrics_port}" if job["job_name"] == "mtserve" else self.address
            job["static_configs"] = [{"targets": [target]}]
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = root / "prometheus.log"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
                 f"--web.listen-address={self.address}"], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        url = f"http://{self.address}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def ready(self) -> bool:
        try:
            return bool(self.query('up{job="mtserve"} == 1'))
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    # A batch of 2 rows and a small queue: a call can be too big for the queue, or slow enough to be late.
    started = Replica(free_port(), free_port(), tmp_path_factory.mktemp("replica") / "mtserve.log",
                      extra_args=("--max-batch-rows", "2", "--max-queue", str(QUEUE),
                                  "--max-texts-per-caller", str(2 * QUEUE)))
    started.start()
    try:
        started.wait_serving()
        yield started
    finally:
        started.kill()


@pytest.fixture(scope="module")
def prometheus(replica: Replica, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = require_tool("prometheus", "prometheus")
    server = Prometheus(binary, tmp_path_factory.mktemp("prometheus"), replica)
    try:
        wait_until(server.ready, "Prometheus to scrape the replica", 60, lambda: log_tail(server.log))
        yield server
    finally:
        server.stop()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr with Grafana's variables filled in) for every target of the dashboard."""
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, (panel["title"], expr)
            queries.append((panel["title"], expr))
    return queries


def alert_rules() -> dict[str, str]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def without_thresholds(expr: str) -> str:
    """An alert's expression without its comparisons to constants: the series it would compare."""
    return re.sub(r"\s*(?:>|<|>=|<=|==|!=)\s*-?\d+(?:\.\d+)?", "", expr)


def waiting_texts(replica: Replica) -> float:
    """The replica's mtserve_texts_waiting gauge, summed over its models."""
    with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("mtserve_texts_waiting{"))


def traffic(replica: Replica) -> None:
    texts = ["Guten Morgen!", "Wie spät ist es?"]
    with TranslationClient(replica.address, timeout=60, retries=0) as client:
        for _ in range(5):
            client.translate(texts)
        for _ in range(3):
            list(client.translate_stream(texts))
        with pytest.raises(TranslationError):  # InvalidArgument: refused, not a server-side error
            client.translate(texts, beam_size=99)

        # A call that fills the queue, then one the queue has no room for (RESOURCE_EXHAUSTED, queue_full):
        # as many texts as the queue holds, sent once the first call's texts are seen waiting (a fixed
        # sleep raced the engine: a faster step had drained enough of the queue in 0.2 s to let it in).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            filling = pool.submit(client.translate, [LONG_TEXT] * QUEUE)
            wait_until(lambda: waiting_texts(replica) > 0, "the filling call's texts to wait in the queue", 30,
                       lambda: log_tail(replica.log_path))
            with pytest.raises(TranslationError) as refused:
                client.translate(["Guten Morgen!"] * QUEUE)
            assert len(filling.result(timeout=60)) == QUEUE
        assert refused.value.code.name == "RESOURCE_EXHAUSTED" and "queue" in refused.value.details, refused.value
        # Long texts on a batch of two rows take longer than this deadline: it passes while they decode.
        with pytest.raises(TranslationError) as late:
            client.translate([LONG_TEXT] * 6, timeout=0.15)
        assert late.value.code.name == "DEADLINE_EXCEEDED", late.value


def test_every_query_and_alert_returns_data(prometheus: Prometheus, replica: Replica) -> None:
    error_ratio = dict(dashboard_queries())["Error ratio"]
    # After OK calls only, the error ratio is 0, not "No data" (the `or vector(0)`). Two calls a few scrapes
    # apart: the first one creates the series, the second one gives it a rate.
    with TranslationClient(replica.address, timeout=60, retries=0) as client:
        client.translate(["Guten Morgen!"])
        time.sleep(3)
        client.translate(["Guten Morgen!"])

    def ratio() -> list[float]:
        return [float(s["value"][1]) for s in prometheus.query(error_ratio)]

    wait_until(lambda: ratio() and not math.isnan(ratio()[0]), "the error ratio of OK calls only", 30,
               lambda: log_tail(prometheus.log))
    assert ratio() == [0.0]

    # Twice, scrapes apart: a series' first sample has no rate yet (Prometheus cannot tell its increase).
    traffic(replica)
    time.sleep(3)
    traffic(replica)
    time.sleep(3)

    def missing() -> list[str]:
        empty = [f"panel {title!r}: {expr}" for title, expr in dashboard_queries()
                 if title not in NO_DATA_HERE and not prometheus.query(expr)]
        empty += [f"alert {name}: {without_thresholds(expr)}" for name, expr in alert_rules().items()
                  if not prometheus.query(without_thresholds(expr))]
        return empty

    wait_until(lambda: not missing(), "every query to return data", 30, lambda: "\n".join(missing()))
    assert float(prometheus.query(error_ratio)[0]["value"][1]) > 0
    # Prometheus loaded the alerting rules and evaluates each of them without an error.
    rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert sorted(rule["name"] for rule in rules) == sorted(alert_rules())
    assert all(rule["health"] == "ok" for rule in rules), rules


def test_panels_without_data_here_are_the_gpu_ones(prometheus: Prometheus) -> None:
    for title, expr in dashboard_queries():
        if title in NO_DATA_HERE:
            assert prometheus.query(expr) == [], (title, NO_DATA_HERE[title])
