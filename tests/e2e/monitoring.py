"""The chart's dashboard and alerts, read by a real Prometheus (built from its Go module by
tests/cluster/build.sh) scraping real operators and sidecars: every query runs, and every
metric and label it reads is one they expose."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from conftest import ROOT, Procs, free_port

CHART_FILES = ROOT / "charts" / "tollgate" / "files"
RULES = CHART_FILES / "prometheus-rules.yaml"
DASHBOARD = CHART_FILES / "grafana-dashboard.json"
# What Grafana puts in a query before Prometheus sees it.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1m", "$namespace": ".*"}


def tools_dir() -> Path:
    out = subprocess.run(["bash", str(ROOT / "tests" / "cluster" / "build.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query with Grafana's variables filled in) of every panel and variable."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            # label_values(METRIC, LABEL) is Grafana's; Prometheus reads it as this.
            metric, label = var["query"]["query"].removeprefix("label_values(").removesuffix(")").split(", ")
            out.append((f"variable {var['name']}", f"count by ({label}) ({metric})"))
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            out.append((panel["title"], expr))
    return out


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}).json()
        assert r["status"] == "success", (expr, r)
        return r["data"]["result"]

    def selectors(self, expr: str) -> list[tuple[str, set[str]]]:
        """Each metric `expr` reads, with the labels it reads of it: its matchers', and those
        the aggregations and matchings above it group or match by."""
        r = httpx.get(f"{self.url}/api/v1/parse_query", params={"query": expr}).json()
        assert r["status"] == "success", (expr, r)
        found: list[tuple[str, set[str]]] = []

        def walk(node, labels: set[str]) -> None:
            if isinstance(node, list):
                for n in node:
                    walk(n, labels)
                return
            if not isinstance(node, dict):
                return
            kind = node.get("type")
            if kind in ("vectorSelector", "matrixSelector"):
                read = {m["name"] for m in node["matchers"]} - {"__name__"}
                found.append((node["name"], read | labels))
                return
            below = set(labels)
            if kind == "aggregation" and not node.get("without"):
                below |= set(node.get("grouping") or [])
            if kind == "binaryExpr" and node.get("matching"):
                below |= set(node["matching"].get("labels") or []) | set(node["matching"].get("include") or [])
            for key, child in node.items():
                if key not in ("matchers", "grouping", "matching"):
                    walk(child, below)

        walk(r["data"], set())
        return found

    def labels_of(self, metric: str) -> set[str]:
        """Every label name of `metric`'s series; empty when it has none."""
        r = httpx.get(f"{self.url}/api/v1/series", params={"match[]": metric}).json()
        assert r["status"] == "success", r
        return {k for s in r["data"] for k in s}

    def alerts(self) -> list[dict]:
        return httpx.get(f"{self.url}/api/v1/alerts").json()["data"]["alerts"]


def start_prometheus(procs: Procs, tmp: Path, targets: list[tuple[str, dict]]) -> Prometheus:
    """Prometheus scraping each (admin URL, labels) every second, with the chart's rules loaded:
    the labels are those the chart's PodMonitors give (job, namespace, pod)."""
    port = free_port()
    config = tmp / "prometheus.yml"
    jobs: dict[str, list] = {}
    for url, labels in targets:
        others = {k: v for k, v in labels.items() if k != "job"}
        jobs.setdefault(labels["job"], []).append({"targets": [url.removeprefix("http://")], "labels": others})
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": job, "static_configs": static} for job, static in jobs.items()],
    }))
    procs.start("prometheus", [str(tools_dir() / "prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}"], port)
    prom = Prometheus(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while True:
        up = prom.query("up == 1")
        if len(up) == len(targets) and prom.query("count_over_time(up[1m]) >= 3"):
            return prom
        assert time.monotonic() < deadline, f"targets not all up: {up}"
        time.sleep(0.5)


def check_reads_what_is_exposed(prom: Prometheus, queries: list[tuple[str, str]]) -> None:
    """Every query runs, and every metric and label it reads exists in what was scraped."""
    problems = []
    for where, expr in queries:
        prom.query(expr)
        for metric, labels in prom.selectors(expr):
            have = prom.labels_of(metric)
            if not have:
                problems.append(f"{where}: {metric} is not exposed")
            elif labels - have:
                problems.append(f"{where}: {metric} has no label {sorted(labels - have)} (it has {sorted(have)})")
    assert not problems, "\n".join(problems)
