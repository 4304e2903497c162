"""Metrics reach a real Prometheus: Debian's prometheus and prometheus-pushgateway started on loopback, a real ingest
pushes, Prometheus scrapes the gateway, and the series are read back through Prometheus's HTTP API."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from docingest.flows.ingest import ingest_documents

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMETHEUS = shutil.which("prometheus")
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")


@pytest.fixture
def prometheus_stack(tmp_path, free_port, wait_http):
    if not (PROMETHEUS and PUSHGATEWAY):
        pytest.skip("needs Debian's prometheus and prometheus-pushgateway (scripts/system-deps.sh installs them)")
    procs = []
    gw_port, prom_port = free_port(), free_port()
    gw_log = tmp_path / "pushgateway.log"
    procs.append(subprocess.Popen([PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{gw_port}"],
                                  stdout=gw_log.open("w"), stderr=subprocess.STDOUT))
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: pushgateway\n"
        "    honor_labels: true\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{gw_port}']}}]\n"
    )
    prom_log = tmp_path / "prometheus.log"
    procs.append(subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}"],
                                  stdout=prom_log.open("w"), stderr=subprocess.STDOUT))
    try:
        wait_http(f"http://127.0.0.1:{gw_port}/-/ready", procs[0], gw_log)
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", procs[1], prom_log)
        yield f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{prom_port}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def query(prometheus: str, promql: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(prometheus: str, promql: str, predicate=lambda r: bool(r), timeout: float = 30) -> list[dict]:
    """Until Prometheus has what a push sent: it scrapes the gateway every second here, so a push shows within ~2 s;
    30 s is 15x that."""
    deadline = time.monotonic() + timeout
    while not predicate(result := query(prometheus, promql)):
        assert time.monotonic() < deadline, (promql, result)
        time.sleep(0.5)
    return result


def by(result: list[dict], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


def test_a_run_pushes_its_metrics_and_prometheus_has_them(prefect_server, home, tmp_path, monkeypatch,
                                                          prometheus_stack):
    from docingest.settings import get_settings

    gateway, prometheus = prometheus_stack
    monkeypatch.setenv("DOCINGEST_PUSHGATEWAY_URL", gateway)
    get_settings.cache_clear()
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"note{i}.md").write_text(f"# Note {i}\n\nMetrics drill, note number {i}, about pushgateways.\n")
    (docs / "corrupt.docx").write_bytes(b"PK\x03\x04 not a real office file")

    first = ingest_documents(source=str(docs), collection="metrics")
    assert (first.documents.new, first.documents.failed) == (4, 1)
    scope = first.source
    sel = f'collection="metrics",scope="{scope}"'

    # The run also pushes every 15 s while it runs: wait for the push of its end (the only one with a run status).
    wait_for(prometheus, f"docingest_run_status{{{sel}}}")
    outcomes = by(query(prometheus, f"docingest_documents_total{{{sel}}}"), "outcome")
    assert outcomes["success"] == 3 and outcomes["failed"] == 1 and outcomes["unchanged"] == 0
    failed = query(prometheus, f'docingest_documents_total{{{sel},outcome="failed"}}')
    assert failed[0]["metric"]["stage"] == "parse"
    assert by(query(prometheus, f"docingest_chunks_total{{{sel}}}"), "operation")["upserted"] == first.chunks.upserted
    assert sum(by(query(prometheus, f"docingest_failures_total{{{sel}}}"), "stage").values()) == 1
    assert by(query(prometheus, f"docingest_run_status{{{sel}}}"), "collection") == {"metrics": 0.0}
    assert query(prometheus, f"docingest_last_success_timestamp_seconds{{{sel}}}") == []  # no success yet
    stages = by(query(prometheus, f"sum by (stage) (docingest_stage_duration_seconds_count{{{sel}}})"), "stage")
    assert stages["parse"] >= 3 and stages["embed"] >= 1 and stages["upsert"] >= 1
    p95 = query(prometheus, "histogram_quantile(0.95, sum by (le) "
                            f"(docingest_stage_duration_seconds_bucket{{{sel},stage=\"parse\"}}))")
    assert math.isfinite(float(p95[0]["value"][1]))  # the histogram answers a quantile (not NaN: it has samples)
    assert float(query(prometheus, f"docingest_embed_chunks_per_second{{{sel}}}")[0]["value"][1]) > 0
    assert float(query(prometheus, f"docingest_documents_in_flight{{{sel}}}")[0]["value"][1]) == 0

    (docs / "corrupt.docx").unlink()
    before = time.time()
    second = ingest_documents(source=str(docs), collection="metrics")
    assert second.ok and second.documents.unchanged == 3
    status = wait_for(prometheus, f"docingest_run_status{{{sel}}}", lambda r: r and float(r[0]["value"][1]) == 1)
    assert float(status[0]["value"][1]) == 1
    last = wait_for(prometheus, f"docingest_last_success_timestamp_seconds{{{sel}}}")
    assert float(last[0]["value"][1]) >= before
    wait_for(prometheus, f'docingest_documents_total{{{sel},outcome="unchanged"}} == 3')
    outcomes = by(query(prometheus, f"docingest_documents_total{{{sel}}}"), "outcome")
    assert outcomes["unchanged"] == 3 and outcomes["success"] == 0 and "failed" not in outcomes  # the latest run's
