"""Open loop at a fixed share of the design's maximum (its throughput at
c64): latency corrected for coordinated omission."""

NAME = "rate"
ABOUT = "open loop at 50% and 90% of the design's maximum: corrected latency"
QUICK = True
TITLE = "latency at a fixed rate (open loop, corrected)"
COLUMNS = [
    ("target/s 50%", "50%", "rate"), ("p99 us at 50%", "50%", "p99_us"),
    ("target/s 90%", "90%", "rate"), ("got/s 90%", "90%", "rps"), ("p99 us at 90%", "90%", "p99_us"),
    ("p99.9 us at 90%", "90%", "p999_us"),
]
BEST = (5, "min")


def run(bench, designs):
    for design in designs:
        top = bench.max_rps.get(design)
        if not top:
            bench.record(design, NAME, "-", reason="no throughput figure to take a rate from")
            continue

        def go(srv):
            for pct in ([90] if bench.quick else [50, 90]):
                rate = max(1, int(top * pct / 100))
                bench.measure(design, NAME, f"{pct}%", srv,
                              bench.base(64, ["-R", str(rate)]) + [bench.url(srv)],
                              extra={"rate": rate}, hgrm=True)
        bench.with_server(design, NAME, go)
