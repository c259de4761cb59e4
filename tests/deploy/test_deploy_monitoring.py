"""deploy/prometheus and deploy/grafana: valid for the real Prometheus tooling (promtool), and built only on
metrics, labels and label values the server really exports (server/metrics.py, server/errors.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from _deploy_support import (
    DEPLOY,
    TARGET_LABELS,
    declared_metrics,
    known_label_values,
    promql_label_names,
    promql_label_values,
    promql_metric_names,
    promtool_check_expressions,
    run,
)
from _js import js_modules

PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "mtserve.json"
# What Grafana puts in place of its variables, for Prometheus' parser.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions() -> dict[str, str]:
    """'panel title/refId' -> its PromQL, Grafana's variables replaced by what Grafana would put there;
    the template variables' label_values() selectors too."""
    board = dashboard()
    variables = [v["name"] for v in board["templating"]["list"]]
    substitutions = {**GRAFANA_VARIABLES, **{f"${name}": ".+" for name in variables}}

    def substitute(expr: str) -> str:
        # Longest first, so that $__rate_interval is not read as $__rate followed by text.
        for variable in sorted(substitutions, key=len, reverse=True):
            expr = expr.replace(variable, substitutions[variable])
        assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
        return expr

    expressions = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expressions[f"{panel['title']}/{target['refId']}"] = substitute(target["expr"])
    for variable in board["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match, f"variable {variable['name']}: expected label_values(selector, label)"
        expressions[f"variable {variable['name']}"] = substitute(match.group(1))
        expressions[f"variable {variable['name']} label"] = f"sum by ({match.group(2)}) ({substitute(match.group(1))})"
    return expressions


def check_against_the_server(expressions: dict[str, str]) -> None:
    """Every metric, label and enumerated label value in `expressions` is one the server exports."""
    metrics = declared_metrics()
    values = known_label_values()
    problems = []
    for where, expr in expressions.items():
        names = promql_metric_names(expr)
        if not names:
            problems.append(f"{where}: selects no metric: {expr}")
        unknown = sorted(names - metrics.keys())
        if unknown:
            problems.append(f"{where}: unknown metrics {unknown}")
        labels = TARGET_LABELS.union(*(metrics.get(name, frozenset()) for name in names))
        stray = sorted(promql_label_names(expr) - labels)
        if stray:
            problems.append(f"{where}: labels {stray} are not labels of {sorted(names)}")
        for label, used in promql_label_values(expr).items():
            wrong = sorted(value for value in used if label in values and value not in values[label] | {".+"})
            if wrong:
                problems.append(f"{where}: {label} values {wrong} do not exist (known: {sorted(values[label])})")
    assert not problems, "\n".join(problems)


# -- the checks' own behaviour ------------------------------------------------------------------------


def test_promql_helpers_find_names_labels_and_values() -> None:
    expr = ('histogram_quantile(0.99, sum by (model, le) (rate(mtserve_x_bucket{code!~"OK|Canceled"}[5m])))'
            ' / on (model) group_left sum(up{job="a"} offset 5m) > 1e3 and bool foo:bar')
    assert promql_metric_names(expr) == {"mtserve_x_bucket", "up", "foo:bar"}
    assert promql_label_names(expr) == {"model", "le", "code", "job"}
    assert promql_label_values(expr) == {"code": {"OK", "Canceled"}, "job": {"a"}}
    with pytest.raises(AssertionError, match="unknown metrics"):
        check_against_the_server({"typo": "rate(mtserve_request_duration_second_count[5m])"})
    with pytest.raises(AssertionError, match="labels"):
        check_against_the_server({"label": "sum by (reason) (mtserve_texts_waiting)"})
    with pytest.raises(AssertionError, match="values"):
        check_against_the_server({"value": 'mtserve_request_duration_seconds_count{code="INTERNAL"}'})


def test_promtool_rejects_a_broken_expression(promtool: str, tmp_path: Path) -> None:
    """The syntax check below can fail: promtool refuses what Prometheus would refuse."""
    checked = promtool_check_expressions(promtool, {"broken": "sum(rate(up[5m])"}, tmp_path)
    assert checked.returncode != 0


# -- Prometheus -----------------------------------------------------------------------------------------


def test_prometheus_config_is_valid(promtool: str) -> None:
    checked = run([promtool, "check", "config", str(PROMETHEUS / "prometheus.yml")])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout, checked.stdout  # alerts.yml is loaded


def test_alert_rules_are_valid(promtool: str) -> None:
    checked = run([promtool, "check", "rules", str(PROMETHEUS / "alerts.yml")])
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_unit_tests_pass(promtool: str) -> None:
    checked = run([promtool, "test", "rules", str(PROMETHEUS / "alerts_test.yml")], cwd=PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout, checked.stdout


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']}: no test where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']}: no test where it stays quiet"


def test_alerts_use_real_metrics_labels_and_values() -> None:
    rules = alert_rules()
    assert {"MtserveReplicaDown", "MtserveHighErrorRatio", "MtserveHighLatencyP99", "MtserveRejectingRequests",
            "MtserveQueueBuildingUp"} <= {rule["alert"] for rule in rules}
    check_against_the_server({rule["alert"]: rule["expr"] for rule in rules})


def test_scrape_job_is_the_one_the_alerts_select() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    for rule in alert_rules():
        for job in promql_label_values(rule["expr"]).get("job", set()):
            assert job in jobs, f"{rule['alert']} selects job {job!r}; prometheus.yml scrapes {sorted(jobs)}"


# -- Grafana --------------------------------------------------------------------------------------------


def test_dashboard_queries_parse_in_prometheus(promtool: str, tmp_path: Path) -> None:
    expressions = dashboard_expressions()
    checked = promtool_check_expressions(promtool, expressions, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in checked.stdout, checked.stdout


def test_dashboard_uses_real_metrics_labels_and_values() -> None:
    check_against_the_server(dashboard_expressions())


def test_dashboard_shows_what_an_operator_needs() -> None:
    titles_by_metric: dict[str, list[str]] = {}
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            for name in promql_metric_names(target["expr"]):
                titles_by_metric.setdefault(name, []).append(panel["title"])
    wanted = [
        "mtserve_request_duration_seconds_count",  # request rate by model and code
        "mtserve_request_duration_seconds_bucket",  # p50/p99 latency
        "mtserve_time_to_first_token_seconds_bucket",
        "mtserve_time_per_output_token_seconds_bucket",
        "mtserve_generated_tokens_total",
        "mtserve_decoder_batch_size_bucket",
        "mtserve_kv_cache_usage_ratio",
        "mtserve_texts_running",
        "mtserve_texts_waiting",
        "mtserve_requests_rejected_total",
        "mtserve_queue_wait_seconds_bucket",
    ]
    missing = [name for name in wanted if name not in titles_by_metric]
    assert not missing, f"no panel shows {missing}"
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    assert any("by (model, code)" in e and "mtserve_request_duration_seconds_count" in e for e in exprs)
    assert any("by (model, reason)" in e and "mtserve_requests_rejected_total" in e for e in exprs)
    for quantile in ("0.5", "0.99"):
        assert any(f"histogram_quantile({quantile}," in e and "mtserve_request_duration_seconds_bucket" in e
                   for e in exprs), quantile


def test_dashboard_is_provisioned_with_its_datasource() -> None:
    board = dashboard()
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    used = [item["datasource"] for item in board["panels"] + board["templating"]["list"] if "datasource" in item]
    used += [t["datasource"] for p in board["panels"] for t in p.get("targets", []) if "datasource" in t]
    assert used and all(ds == {"type": "prometheus", "uid": source["uid"]} for ds in used), used
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "mtserve.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    # The compose stack mounts deploy/grafana/dashboards where the provider looks, and Prometheus where
    # the datasource points.
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["grafana"]["volumes"]
                  if volume.startswith("./"))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    host_port = re.fullmatch(r"http://([\w.-]+):(\d+)", source["url"])
    assert host_port and host_port.group(1) in compose["services"], source["url"]
    assert host_port.group(2) == "9090"  # Prometheus' port inside its container


# The dashboard as a TypeScript value of Grafana's published Dashboard type (@grafana/schema): unknown
# properties and wrong types fail `tsc`. The schema's string enums are taken as their values, as JSON has them.
_DASHBOARD_TS = """import type { Dashboard } from "@grafana/schema";

type Literal<T> = T extends string ? `${T}`
  : T extends readonly (infer E)[] ? Literal<E>[]
  : T extends object ? { [K in keyof T]: Literal<T[K]> }
  : T;

export const dashboard: Literal<Dashboard> = DASHBOARD;
"""


def grafana_schema_errors(dashboard: dict[str, Any], directory: Path) -> str:
    """tsc's complaints about `dashboard` against @grafana/schema's Dashboard ("" when there are none)."""
    _, modules = js_modules()
    (directory / "node_modules").symlink_to(modules)
    (directory / "dashboard.ts").write_text(_DASHBOARD_TS.replace("DASHBOARD", json.dumps(dashboard, indent=2)))
    (directory / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "module": "nodenext", "moduleResolution": "nodenext",
                            "target": "es2022", "skipLibCheck": True, "types": []},
        "files": ["dashboard.ts"]}))  # fmt: skip
    checked = run([str(modules / ".bin" / "tsc"), "-p", str(directory / "tsconfig.json")], timeout=120)
    return (checked.stdout + checked.stderr).strip() if checked.returncode else ""


def test_dashboard_matches_grafanas_published_schema(tmp_path: Path) -> None:
    assert grafana_schema_errors(dashboard(), tmp_path) == ""


def test_grafana_schema_check_can_fail(tmp_path: Path) -> None:
    broken = dashboard()
    broken["templating"]["list"][0]["definition"] = "label_values(up, job)"  # not in the schema
    broken["panels"][0]["gridPos"]["w"] = "wide"
    errors = grafana_schema_errors(broken, tmp_path)
    assert "'\"definition\"' does not exist" in errors and "not assignable to type 'number'" in errors, errors
