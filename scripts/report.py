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
import svgchart  # noqa: E402

# Per scenario: its numbered title, its columns (header, point, figure) and
# which column decides the best row ('max' or 'min'), from the scenario's own
# file (scripts/scenarios/NN-NAME.py), numbered in file-name order.
TABLES = {sc.NAME: (f"{i}. {sc.TITLE}", sc.COLUMNS, sc.BEST) for i, sc in enumerate(H.scenarios(), 1)}
# A row per design, or per what the scenario's row(run) labels a run with
# (incrementor: design and mode; proxy: point and variant).
ROW = {sc.NAME: getattr(sc, "row", lambda r: r["design"]) for sc in H.scenarios()}


def lookup(runs, design, scenario, point, key):
    for r in runs:
        if r["design"] == design and r["scenario"] == scenario and (point == "*" or r["point"] == point):
            if r["ok"] or key in r["figures"]:
                return r["figures"].get(key)
    return None


def subject(label, run):
    """What a note is about: the row's label, and the run's point unless the
    label already names it (scenarios whose rows are points)."""
    point = str(run["point"])
    return label if point in label else f"{label} {point}"


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
        label = ROW[scenario](r)
        if label not in seen:
            seen.append(label)
        keyed.setdefault(label, []).append(r)
        if not r["ok"]:
            notes.append(f"{subject(label, r)}: {r['reason']}")
        elif r.get("loadgen_bound"):
            busy = r["figures"].get("loadgen_cpus_busy")
            notes.append(f"{subject(label, r)}: the client was the limit (loadgen's CPUs were "
                         f"{f'{busy:.0%} ' if busy is not None else ''}busy), not the server")
        elif r.get("link_bound"):
            drops = r["figures"].get("link_tun_drops")
            why = (f"{drops} packets dropped before it could read them" if drops
                   else "its CPU was busy")
            notes.append(f"{subject(label, r)}: the link emulator was the limit ({why}), "
                         "not the server")
        # Requests the run left unanswered, one of them older than every
        # latency in the row: a tail the row cannot show (loadgen's
        # `unfinished`; cut off by the end, they are as young as answers).
        unf, oldest = r["figures"].get("unfinished"), r["figures"].get("unfinished_oldest_us")
        if r["ok"] and unf and oldest is not None and oldest > (r["figures"].get("max_us") or 0):
            notes.append(f"{subject(label, r)}: {unf} requests unanswered at the end, the oldest "
                         f"for {oldest / 1000:.0f} ms: longer than any latency in its row")
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


THROUGHPUT_POINTS = ("c64", "c64-pipe16")  # the CPU charts' points, when present


def point_runs(summary, point):
    """The throughput scenario's ok runs at point, nginx's anchor included."""
    return [r for r in summary["runs"] if r["ok"] and r["point"] == point
            and (r["scenario"] == "throughput" or (r["scenario"] == "anchors" and r["design"] == "nginx"))]


def spread(r, key, lo_key=None, hi_key=None):
    """(lowest, highest) of a figure over a record's rounds, None with one."""
    rounds = [v for v in (r.get("rounds") or {}).get(key) or [] if v is not None]
    if len(rounds) > 1:
        return min(rounds), max(rounds)
    f = r["figures"]
    if lo_key and f.get(lo_key) is not None and f.get(hi_key) is not None:
        return f[lo_key], f[hi_key]
    return None


def label(r):
    return r["design"] + (" (loadgen-bound)" if r.get("loadgen_bound") else "")


def charts(out, summary):
    """The page's charts, [(section, id, caption, svg)] in page order: server
    CPU per request by design, throughput against connections, the latency
    spectrum of each scenario with .hgrm files. Each is also written beside
    the page as ID.svg."""
    made = []
    rounds = summary.get("config", {}).get("repeat") or 1
    spread_note = (f"whiskers: lowest to highest of the {rounds} rounds, the bar the round kept "
                   "(the median by req/s)"
                   if rounds > 1 else "one round per point (--quick): no spread to show")
    for point in THROUGHPUT_POINTS:
        rs = [r for r in point_runs(summary, point) if r["figures"].get("server_cpu_per_req_us") is not None]
        if not rs:
            continue
        rs.sort(key=lambda r: r["figures"]["server_cpu_per_req_us"])
        bars = [(label(r), [r["figures"].get("server_user_per_req_us"), r["figures"].get("server_system_per_req_us")],
                 spread(r, "server_cpu_per_req_us")) for r in rs]
        made.append(("cpu", f"cpu-{point}", f"Server CPU per request at {point} (GET /), lowest first; {spread_note}.",
                     svgchart.hbars(f"server CPU per request, GET / {point}", "us per request", bars,
                                    parts=["user", "system"])))
    series = {}
    for r in (r for r in summary["runs"] if r["ok"]):
        if (r["scenario"] == "throughput" or (r["scenario"] == "anchors" and r["design"] == "nginx")) \
                and r["point"][1:].isdigit() and r["point"][0] == "c":
            lo_hi = spread(r, "rps", "rps_min", "rps_max") or (None, None)
            series.setdefault(r["design"], []).append((int(r["point"][1:]), r["figures"].get("rps"), *lo_hi))
    conns = {p[0] for v in series.values() for p in v}
    if len(conns) > 1:
        for k in series:
            series[k].sort()
        made.append(("throughput", "throughput", f"GET / req/s against connections (closed loop); {spread_note}.",
                     svgchart.lines("GET / req/s against connections", "connections", "req/s", series,
                                    logx=True)))
    for point in THROUGHPUT_POINTS if len(conns) <= 1 else THROUGHPUT_POINTS[1:]:
        rs = sorted((r for r in point_runs(summary, point) if r["figures"].get("rps") is not None),
                    key=lambda r: -r["figures"]["rps"])
        if rs:
            made.append(("throughput", f"throughput-{point}",
                         f"GET / req/s at {point}, highest first; {spread_note}.",
                         svgchart.hbars(f"GET / req/s at {point}", "req/s",
                                        [(label(r), r["figures"]["rps"], spread(r, "rps", "rps_min", "rps_max"))
                                         for r in rs])))
    for sc in TABLES:
        curves = {}
        for r in summary["runs"]:
            if r["scenario"] != sc or not r["ok"] or not r.get("file"):
                continue
            pts = read_hgrm(out / r["file"].replace(".json", ".hgrm"))
            if pts:
                curves[r["design"] if sc in ("hol-wait", "hol-burn") else f"{ROW[sc](r)} {r['point']}"] = pts
        if curves:
            made.append(("latency", f"latency-{sc}",
                         f"{TABLES[sc][0]}: latency by percentile (HdrHistogram spectrum: the x axis is "
                         "1/(1-p) on a log scale, so the tail gets room; the y axis is log too).",
                         svgchart.lines(f"{sc}: latency by percentile", "percentile", "latency (ms)", curves,
                                        logx=True, logy=True, spectrum=True,
                                        xticks=[("0%", 1), ("50%", 2), ("90%", 10), ("99%", 100),
                                                ("99.9%", 1000), ("99.99%", 10000), ("99.999%", 100000)])))
    for _sec, cid, _cap, svg in made:
        (out / f"{cid}.svg").write_text(svg + "\n")
    return made


def read_hgrm(path):
    """(1/(1-p), latency ms) points from an HdrHistogram .hgrm text file
    (loadgen writes its values in milliseconds, as wrk2 does)."""
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


def machine_html(summary):
    """The machine and the topology as readable tables."""
    env, cfg = summary.get("env") or {}, summary.get("config") or {}
    rows = [("CPU", f"{env.get('cpu_model') or '?'}, {env.get('cores') or '?'} cores"),
            ("kernel", env.get("kernel")), ("compiler", env.get("compiler")), ("CFLAGS", env.get("cflags")),
            ("commit", env.get("git_commit")), ("date", env.get("date")), ("python", env.get("python")),
            ("server CPUs", cfg.get("server_cpus") or "any"), ("loadgen CPUs", cfg.get("loadgen_cpus") or "any"),
            ("run", f"{'quick, ' if cfg.get('quick') else ''}{cfg.get('repeat')} round(s) of "
                    f"{cfg.get('throughput_duration_s') or cfg.get('duration_s')} s per throughput point, "
                    f"{cfg.get('duration_s')} s per other run; {summary.get('elapsed_s')} s in all"),
            ("designs", ", ".join(cfg.get("designs") or [])), ("scenarios", ", ".join(cfg.get("scenarios") or []))]
    h = "<table class=kv>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                                     for k, v in rows) + "</table>"
    topo = summary.get("topology")
    if not topo:
        return h + "<p>Topology: loopback, no emulated network (server and loadgen on this machine).</p>"
    hosts = [[x.get("name"), x.get("addr"), x.get("cpus"), x.get("cpu_quota"), x.get("mem_limit"),
              x.get("oom_kills"), x.get("throttled")] for x in topo.get("hosts") or []]
    h += "<h3>Hosts</h3>" + H.html_table(["host", "address", "CPUs", "CPU quota", "memory limit", "OOM kills",
                                          "throttled"], hosts)
    links = [[f"{x.get('a')} - {x.get('b')}", x.get("rtt"), x.get("jitter"), x.get("loss"), x.get("rate"),
              x.get("rtt_measured_ms"), x.get("rtt_min_ms"), (x.get("emulator") or {}).get("cpu_us_per_packet")]
             for x in topo.get("links") or []]
    h += "<h3>Links</h3>" + H.html_table(["link", "round trip", "jitter", "loss", "rate", "measured ms (median)",
                                          "measured ms (min)", "emulator us/packet"], links)
    return h


SECTIONS = [("cpu", "Server CPU per request, by design"), ("throughput", "Throughput"),
            ("latency", "Latency percentile spectra")]


def write_all(out, summary):
    """Write tables.txt, the charts and index.html into out; return the
    tables as text (what the bench prints). The page leads with the charts
    (CPU per request, throughput, latency spectra), then the machine, then
    the tables; the charts are inline SVG, so it is one file that reads
    offline."""
    out = Path(out)
    texts, tables = [], []
    made = charts(out, summary)
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
        tables.append((title, body))
    text = "\n\n".join(texts) + "\n"
    (out / "tables.txt").write_text(text)
    env = summary.get("env", {})
    parts = ["<!doctype html><html lang=en><meta charset=utf-8><title>concurrency-lab bench</title>",
             f"<style>{H.PAGE_STYLE}{PAGE_EXTRA}</style>",
             f"<h1>concurrency-lab bench</h1><p class=sub>{html.escape(env.get('date') or '')}, commit "
             f"<code>{html.escape((env.get('git_commit') or '?')[:12])}</code>, "
             f"{html.escape(env.get('cpu_model') or '?')} ({env.get('cores') or '?'} cores); "
             f"<a href=#machine>machine and topology</a>, <a href=#tables>tables</a>, "
             f"<a href=summary.json>summary.json</a>.</p>"]
    for sec, heading in SECTIONS:
        these = [m for m in made if m[0] == sec]
        if these:
            parts.append(f"<h2 id={sec}>{html.escape(heading)}</h2>")
            parts += [f'<figure class=chart id="chart-{html.escape(cid)}">{svg}<figcaption>{html.escape(cap)}'
                      f"</figcaption></figure>" for _s, cid, cap, svg in these]
    parts.append("<h2 id=machine>Machine and topology</h2>" + machine_html(summary))
    parts.append("<h2 id=tables>Tables</h2><p>Best row of each table in bold; * in the text tables "
                 "(tables.txt).</p>")
    parts += [f"<h3>{html.escape(title)}</h3>{body}" for title, body in tables]
    configs = summary.get("anchor_configs") or {}
    if configs:
        parts.append("<h2>The anchors' configurations</h2>" + "".join(
            f"<details><summary>{html.escape(name)}</summary><pre>{html.escape(text)}</pre></details>"
            for name, text in configs.items()))
    (out / "index.html").write_text("\n".join(parts) + "\n")
    return text


PAGE_EXTRA = """figure.chart{margin:1em 0}figure.chart svg{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}.sub{color:#555}table.kv th{text-align:left;background:#f6f6f6}
table.kv td{text-align:left}"""


if __name__ == "__main__":
    d = Path(sys.argv[1] if len(sys.argv) > 1 else H.ROOT / "results" / "latest")
    with open(d / "summary.json") as f:
        print(write_all(d, json.load(f)))
