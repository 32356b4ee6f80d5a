#!/usr/bin/env python3
"""Prove that every shipped query works against a real Prometheus.

Starts `usher demo` (a real usher serving generated traffic) and a real
Prometheus scraping it every second with the shipped recording and alert
rules loaded, then evaluates through Prometheus's HTTP API:

  * every `expr` of every panel in deploy/grafana/usher.json, with the
    dashboard variables filled in as Grafana would ($job, $instance,
    $class, $__rate_interval, $__range);
  * every recording rule's expression and the series it recorded;
  * every alert's expression (it may be empty: nothing should be firing);
  * every dashboard variable's `label_values(...)` query;

and fails if any query errors, if a dashboard query or recording rule
returns no series or only NaN (a histogram the demo never fed), if a
variable offers no values, or if Prometheus reports any rule unhealthy.

Usage: deploy/prove-queries.py [--usher target/debug/usher]
       [--prometheus prometheus] [--seconds 25]
Needs only Python 3's standard library and Prometheus (Debian package
`prometheus`). Run by .ci/run through deploy/check.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DASHBOARD = os.path.join(HERE, "grafana", "usher.json")
RULE_FILES = [
    os.path.join(HERE, "prometheus", "usher-recording.rules.yml"),
    os.path.join(HERE, "prometheus", "usher-alerts.rules.yml"),
]

# What Grafana would put in place of each variable. Ranges are short
# because the demo runs for seconds, not hours.
VARIABLES = {
    "$__rate_interval": "30s",
    "$__range": "5m",
    "$instance": ".*",
    "$class": ".*",
    "$job": "usher",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def substitute(expr):
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    left = re.findall(r"\$\{?\w+", expr)
    if left:
        raise ValueError(f"unknown variables {left} in: {expr}")
    return expr


def load_dashboard(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def dashboard_variables(dashboard):
    """(name, label, selector or None) for every label_values variable."""
    found = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        match = re.fullmatch(r"\s*label_values\((?:(.*),\s*)?(\w+)\)\s*", query or "")
        if not match:
            raise SystemExit(f"prove-queries: variable {variable.get('name')}: cannot read {query!r}")
        found.append((variable["name"], match.group(2), match.group(1)))
    return found


def dashboard_queries(dashboard):
    """(panel title, expr) for every target of every panel, rows included."""
    found = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return found


def finite(value):
    return value not in ("NaN", "+Inf", "-Inf")


class Prometheus:
    def __init__(self, base):
        self.base = base

    def get(self, path, **params):
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as e:
            # Bad queries answer 400/422 with a JSON error body.
            return json.load(e)

    def query(self, expr):
        """(series count, series with a finite value, error or None)."""
        answer = self.get("/api/v1/query", query=expr)
        if answer.get("status") != "success":
            return 0, 0, answer.get("error", "unknown error")
        data = answer["data"]
        if data["resultType"] == "vector":
            result = data["result"]
            return len(result), sum(finite(s["value"][1]) for s in result), None
        return 1, 1, None  # scalar or string

    def label_values(self, label, selector):
        params = {"match[]": selector} if selector else {}
        answer = self.get(f"/api/v1/label/{label}/values", **params)
        if answer.get("status") != "success":
            return None, answer.get("error", "unknown error")
        return answer["data"], None


def dump_logs(work):
    for name in ("usher.log", "prometheus.log"):
        path = os.path.join(work, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                tail = f.read()[-4000:]
            print(f"--- {name} (last lines) ---\n{tail}", file=sys.stderr)


def wait_for(what, check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"prove-queries: timed out waiting for {what}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--usher", default="target/debug/usher")
    parser.add_argument("--prometheus", default="prometheus")
    parser.add_argument(
        "--seconds",
        type=int,
        default=25,
        help="traffic to collect before querying",
    )
    args = parser.parse_args()
    prometheus_bin = shutil.which(args.prometheus)
    if not prometheus_bin:
        raise SystemExit("prove-queries: prometheus not found (apt-get install prometheus)")

    dashboard = load_dashboard(DASHBOARD)
    queries = dashboard_queries(dashboard)
    variables = dashboard_variables(dashboard)
    if not queries:
        raise SystemExit(f"prove-queries: no queries in {DASHBOARD}")

    work = tempfile.mkdtemp(prefix="usher-prove-")
    children = []
    ok = False
    try:
        admin, prom = free_port(), free_port()
        demo = subprocess.Popen(
            [
                args.usher,
                "demo",
                "--duration",
                str(args.seconds + 120),
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--admin",
                f"127.0.0.1:{admin}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(work, "usher.log"), "w"),
        )
        children.append(demo)
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(
                "global:\n"
                "  scrape_interval: 1s\n"
                "  evaluation_interval: 1s\n"
                "rule_files:\n"
                + "".join(f"  - {json.dumps(path)}\n" for path in RULE_FILES)
                + "scrape_configs:\n"
                "  - job_name: usher\n"
                "    static_configs:\n"
                f"      - targets: ['127.0.0.1:{admin}']\n"
            )
        server = subprocess.Popen(
            [
                prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={os.path.join(work, 'data')}",
                f"--web.listen-address=127.0.0.1:{prom}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(work, "prometheus.log"), "w"),
        )
        children.append(server)
        api = Prometheus(f"http://127.0.0.1:{prom}")
        wait_for(
            "Prometheus to scrape usher",
            lambda: api.query('up{job="usher"} == 1')[0] == 1,
            60,
        )
        print(f"prove-queries: collecting {args.seconds}s of demo traffic")
        time.sleep(args.seconds)
        for child in children:
            if child.poll() is not None:
                raise SystemExit(f"prove-queries: {child.args[0]} exited early ({child.returncode})")

        failures = []

        def check(kind, name, expr, must_have_series=True):
            try:
                expr = substitute(expr)
            except ValueError as e:
                failures.append(f"{kind} {name!r}: {e}")
                return
            count, finite_count, error = api.query(expr)
            if error:
                failures.append(f"{kind} {name!r}: {error}\n    {expr}")
            elif count == 0 and must_have_series:
                failures.append(f"{kind} {name!r}: no series\n    {expr}")
            elif finite_count == 0 and must_have_series:
                failures.append(f"{kind} {name!r}: only NaN or infinite values\n    {expr}")
            else:
                print(f"  ok  {kind:<9} {count:>3} series  {name}")

        for title, expr in queries:
            check("panel", title, expr)

        for name, label, selector in variables:
            values, error = api.label_values(label, selector and substitute(selector))
            if error or not values:
                failures.append(f"variable {name!r}: {error or 'no values'}")
            else:
                print(f"  ok  variable  {len(values):>3} values  {name} ({', '.join(values[:5])})")

        groups = api.get("/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        loaded = {group["file"] for group in groups}
        for path in RULE_FILES:
            if not any(os.path.samefile(path, file) for file in loaded):
                failures.append(f"rule file {path}: not loaded by Prometheus")
        if not rules:
            failures.append("no rules loaded")
        for rule in rules:
            if rule.get("health") != "ok":
                failures.append(
                    f"rule {rule['name']!r}: health {rule.get('health')}: {rule.get('lastError', '')}"
                )
            if rule["type"] == "recording":
                check("recording", rule["name"], rule["query"])
                check("recorded", rule["name"], rule["name"])
            else:
                check("alert", rule["name"], rule["query"], must_have_series=False)

        if failures:
            print("\nprove-queries: FAILED", file=sys.stderr)
            for failure in failures:
                print(f"  {failure}", file=sys.stderr)
            return 1
        print(
            f"prove-queries: ok: {len(queries)} dashboard queries, {len(variables)} variables "
            f"and {len(rules)} rules "
            "evaluated against a real Prometheus"
        )
        ok = True
        return 0
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        if not ok:
            dump_logs(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
