"""Head-of-line blocking by waiting: PING latency beside clients whose
requests wait (WAIT costs no CPU, only a deadline to remember)."""

NAME = "hol-wait"
ABOUT = "PING latency while 8 other clients run WAIT 1000 back to back"
QUICK = True
TITLE = "head-of-line blocking: PING beside 8 clients running WAIT 1000"
COLUMNS = [
    ("success rate", "ping", "success_rate"), ("PING/s", "ping", "rps"), ("p50 us", "ping", "p50_us"),
    ("p99 us", "ping", "p99_us"), ("max us", "ping", "max_us"),
]
BEST = (4, "min")


def run(bench, designs):
    for design in designs:
        bench.ping_beside(design, NAME, "WAIT 1000:1", 8)
