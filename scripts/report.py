"""report: turn a bench summary.json into tables, charts and index.html.

Works on recorded results alone (no server, no loadgen), so it can be
tested and re-run: `python3 scripts/report.py results/latest`.
"""

import html
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

# Per scenario: its title, its columns (header, point, figure) and which
# column decides the best row ('max' or 'min').
TABLES = {
    "throughput": ("1. throughput: GET / closed loop", [
        ("success rate c64", "c64", "success_rate"), ("req/s c1", "c1", "rps"), ("req/s c8", "c8", "rps"), ("req/s c64", "c64", "rps"),
        ("req/s c256", "c256", "rps"), ("req/s pipe16", "c64-pipe16", "rps"),
        ("p50 us c64", "c64", "p50_us"), ("p99 us c64", "c64", "p99_us"), ("p99.9 us c64", "c64", "p999_us"),
        ("usr us/req", "c64", "server_user_per_req_us"), ("sys us/req", "c64", "server_system_per_req_us"),
        ("ctxsw/req", "c64", "ctxsw_per_req"), ("peak RSS KB", "c64", "peak_rss_kb"),
    ], (4, "max")),
    "rate": ("2. latency at a fixed rate (open loop, corrected)", [
        ("target/s 50%", "50%", "rate"), ("p99 us at 50%", "50%", "p99_us"),
        ("target/s 90%", "90%", "rate"), ("got/s 90%", "90%", "rps"), ("p99 us at 90%", "90%", "p99_us"),
        ("p99.9 us at 90%", "90%", "p999_us"),
    ], (5, "min")),
    "hol-wait": ("3. head-of-line blocking: PING beside 8 clients running WAIT 1000", [
        ("success rate", "ping", "success_rate"), ("PING/s", "ping", "rps"), ("p50 us", "ping", "p50_us"),
        ("p99 us", "ping", "p99_us"), ("max us", "ping", "max_us"),
    ], (4, "min")),
    "hol-burn": ("4. CPU-heavy work: PING beside 2 clients running BURN 100000000", [
        ("success rate", "ping", "success_rate"), ("PING/s", "ping", "rps"), ("p50 us", "ping", "p50_us"),
        ("p99 us", "ping", "p99_us"), ("max us", "ping", "max_us"),
    ], (4, "min")),
    "slow-clients": ("5. slow clients: PING beside slowloris and slow readers", [
        ("success rate", "*", "success_rate"), ("PING/s", "*", "rps"), ("p99 us", "*", "p99_us"),
        ("max us", "*", "max_us"),
    ], (3, "min")),
    "c10k": ("6. c10k: idle connections plus 64 active", [
        ("idle held", "*", "idle_open"), ("success rate", "*", "success_rate"), ("req/s", "*", "rps"),
        ("p99 us", "*", "p99_us"), ("KB/conn", "*", "kb_per_conn"), ("peak RSS KB", "*", "peak_rss_kb"),
        ("threads", "*", "threads_max"),
    ], (4, "min")),
    "sandbox": ("7. sandbox: tenant hello against native GET / (same server)", [
        ("native req/s", "native GET /", "rps"), ("tenant req/s", "tenant /t/hello/", "rps"),
        ("ratio", "tenant /t/hello/", "ratio_to_native"), ("tenant p99 us", "tenant /t/hello/", "p99_us"),
        ("CPU ratio", "tenant /t/hello/", "cpu_ratio_to_native"),
        ("sandbox ns/req", "tenant /t/hello/", "sandbox_ns_per_req"),
        ("restored B/req", "tenant /t/hello/", "restored_bytes_per_req"),
    ], (3, "max")),
    "incrementor": ("8. incrementor: POST /increment over 10,000 keys at -c64", [
        ("req/s", "*", "rps"), ("exact", "*", "exact"), ("p99 us", "*", "p99_us"),
        ("ack-commit lag max ms", "*", "max_lag_ms"), ("lag p99 ms", "*", "lag_p99_ms"),
        ("flushes", "*", "flushes"), ("rows written", "*", "rows_written"),
    ], (1, "max")),
    "anchors": ("9. anchors: nginx (one worker) through the throughput points; loadgen against wrk on epoll", [
        ("req/s c1", "c1", "rps"), ("req/s c8", "c8", "rps"), ("req/s c64", "c64", "rps"),
        ("req/s c256", "c256", "rps"), ("req/s pipe16", "c64-pipe16", "rps"),
        ("p99 us c64", "c64", "p99_us"), ("usr us/req", "c64", "server_user_per_req_us"),
        ("sys us/req", "c64", "server_system_per_req_us"),
        ("loadgen req/s", "loadgen c64", "rps"), ("wrk req/s", "wrk c64", "rps"),
        ("loadgen/wrk", "loadgen c64", "ratio_to_wrk"),
    ], (3, "max")),
}


def lookup(runs, design, scenario, point, key):
    for r in runs:
        if r["design"] == design and r["scenario"] == scenario and (point == "*" or r["point"] == point):
            if r["ok"] or key in r["figures"]:
                return r["figures"].get(key)
    return None


def rows_for(summary, scenario):
    """Rows (design first, then one value per column) of a scenario's table,
    the notes on failed or loadgen-bound runs, and the rows' run records."""
    runs = summary["runs"]
    title, cols, best = TABLES[scenario]
    sc_runs = [r for r in runs if r["scenario"] == scenario]
    # The throughput table also shows the nginx anchor, for comparison.
    if scenario == "throughput":
        sc_runs += [dict(r, scenario="throughput") for r in runs if r["scenario"] == "anchors"
                    and r["design"] == "nginx"]
    rows, notes, seen = [], [], []
    keyed = {}
    for r in sc_runs:
        label = r["design"] if scenario != "incrementor" else f"{r['design']} {r['point']}"
        if label not in seen:
            seen.append(label)
        keyed.setdefault(label, []).append(r)
        if not r["ok"]:
            notes.append(f"{label} {r['point']}: {r['reason']}")
        elif r.get("loadgen_bound"):
            notes.append(f"{label} {r['point']}: loadgen was the limit (its CPUs were busy), not the server")
        bp = r["figures"].get("breaking_point")
        if bp:
            notes.append(f"{label}: breaking point: {bp}")
    for label in seen:
        rs = keyed[label]
        row = [label]
        for _h, point, key in cols:
            v = None
            for r in rs:
                if point == "*" or r["point"] == point:
                    if key in r["figures"] and (r["ok"] or key in ("exact",)):
                        v = r["figures"][key]
                        break
            row.append(v)
        rows.append(row)
    return title, ["design"] + [c[0] for c in cols], rows, notes, best


def charts(out, summary):
    """SVG charts: req/s against connections per design, and the latency
    percentile curve of each design per scenario (from the .hgrm files)."""
    made = {}
    runs = summary["runs"]
    series = {}
    for r in runs:
        if (r["scenario"] == "throughput" or (r["scenario"] == "anchors" and r["design"] == "nginx")) \
                and r["ok"] and r["point"].startswith("c") and "pipe" not in r["point"]:
            try:
                c = int(r["point"][1:])
            except ValueError:
                continue
            series.setdefault(r["design"], []).append((c, r["figures"].get("rps")))
    for k in series:
        series[k].sort()
    if H.gnuplot(out / "throughput.svg", "GET / req/s against connections", "connections", "req/s",
                 series, logx=True):
        made["throughput"] = ["throughput.svg"]
    for sc in TABLES:
        curves = {}
        for r in runs:
            if r["scenario"] != sc or not r["ok"] or not r.get("file"):
                continue
            h = out / r["file"].replace(".json", ".hgrm")
            pts = read_hgrm(h)
            if pts:
                curves[f"{r['design']} {r['point']}" if sc not in ("hol-wait", "hol-burn") else r["design"]] = pts
        if curves and H.gnuplot(out / f"latency-{sc}.svg", f"{sc}: latency by percentile",
                                "percentile", "latency (us)", curves, logx=True, logy=True,
                                xtics=[("50%", 2), ("90%", 10), ("99%", 100), ("99.9%", 1000),
                                       ("99.99%", 10000)]):
            made.setdefault(sc, []).append(f"latency-{sc}.svg")
    return made


def read_hgrm(path):
    """(1/(1-p), latency us) points from an HdrHistogram .hgrm text file."""
    pts = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[0][0].isdigit():
                    try:
                        value, pct = float(parts[0]), float(parts[1])
                    except ValueError:
                        continue
                    if pct < 1.0:
                        pts.append((1.0 / (1.0 - pct), value))
    except OSError:
        return []
    return pts


def write_all(out, summary):
    """Write tables.txt, the charts and index.html into out; return the
    tables as text (what the bench prints)."""
    out = Path(out)
    texts, sections = [], []
    images = charts(out, summary)
    present = [sc for sc in TABLES if any(r["scenario"] == sc for r in summary["runs"])]
    for sc in present:
        title, headers, rows, notes, best = rows_for(summary, sc)
        t = H.text_table(title, headers, rows, best)
        if notes:
            t += "\n" + "\n".join("  note: " + n for n in notes)
        texts.append(t)
        body = H.html_table(headers, rows, best)
        if notes:
            body += "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
        sections.append((title, body, images.get(sc, [])))
    text = "\n\n".join(texts) + "\n"
    (out / "tables.txt").write_text(text)
    env = summary.get("env", {})
    intro = ("<p>Best row of each table in bold; * in the text tables. Server on CPUs "
             f"{html.escape(str(summary.get('config', {}).get('server_cpus')))}, loadgen on CPUs "
             f"{html.escape(str(summary.get('config', {}).get('loadgen_cpus')))}.</p><pre>"
             + html.escape(json.dumps(env, indent=1)) + "</pre>")
    H.html_page(out / "index.html", "concurrency-lab bench", intro, sections)
    return text


if __name__ == "__main__":
    d = Path(sys.argv[1] if len(sys.argv) > 1 else H.ROOT / "results" / "latest")
    with open(d / "summary.json") as f:
        print(write_all(d, json.load(f)))
