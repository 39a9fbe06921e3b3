"""Many idle connections beside 64 active ones: how many a design holds,
what each costs in memory, and what the active ones see. Not in --quick."""

import json

NAME = "c10k"
ABOUT = "10,000 idle connections plus 64 active: success, p99, memory per connection"
QUICK = False
TITLE = "c10k: idle connections plus 64 active"
COLUMNS = [
    ("idle held", "*", "idle_open"), ("success rate", "*", "success_rate"), ("req/s", "*", "rps"),
    ("p99 us", "*", "p99_us"), ("KB/conn", "*", "kb_per_conn"), ("peak RSS KB", "*", "peak_rss_kb"),
    ("threads", "*", "threads_max"),
]
BEST = (4, "min")


def run(bench, designs):
    idle = 2000 if bench.quick else 10000
    for design in designs:
        def go(srv):
            before = srv.rss_kb()
            r = bench.measure(design, NAME, f"{idle}+64", srv,
                              bench.base(64, ["--idle", str(idle)]) + [bench.url(srv)],
                              budget=bench.dur * 3 + 90)
            if r["ok"] and r["file"]:
                with open(bench.out / r["file"]) as f:
                    run = json.load(f)
                sc = (run.get("scenarios") or {}).get("idle") or {}
                peak = (run.get("server") or {}).get("peak_rss_kb")
                opened = sc.get("open") or 0
                r["figures"]["idle_open"] = opened
                r["figures"]["idle_failed"] = sc.get("failed")
                if peak and before and opened:
                    r["figures"]["kb_per_conn"] = (peak - before) / opened
                if opened < idle:
                    r["figures"]["breaking_point"] = f"{opened} of {idle} idle connections held"
        bench.with_server(design, NAME, go)
