"""Head-of-line blocking by CPU: PING latency beside clients whose requests
compute for about 0.1 s each."""

NAME = "hol-burn"
ABOUT = "PING latency while 2 other clients run BURN 100000000 back to back"
QUICK = True
TITLE = "CPU-heavy work: PING beside 2 clients running BURN 100000000"
COLUMNS = [
    ("success rate", "ping", "success_rate"), ("PING/s", "ping", "rps"), ("p50 us", "ping", "p50_us"),
    ("p99 us", "ping", "p99_us"), ("max us", "ping", "max_us"),
]
BEST = (4, "min")


def run(bench, designs):
    for design in designs:
        bench.ping_beside(design, NAME, "BURN 100000000:1", 2)
