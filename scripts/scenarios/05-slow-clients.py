"""PING beside slowloris connections (a request one byte at a time) and
slow readers (answers never read). Not in --quick."""

NAME = "slow-clients"
ABOUT = "PING beside 100 slowloris connections and 100 slow readers"
QUICK = False
TITLE = "slow clients: PING beside slowloris and slow readers"
COLUMNS = [
    ("success rate", "*", "success_rate"), ("PING/s", "*", "rps"), ("p99 us", "*", "p99_us"),
    ("max us", "*", "max_us"),
]
BEST = (3, "min")


def run(bench, designs):
    n = 20 if bench.quick else 100
    for design in designs:
        if bench.echo_skip(design, NAME):
            continue

        def go(srv):
            bench.measure(design, NAME, f"{n}+{n}", srv,
                          ["-t", "1", "-c", "4", "-d", f"{bench.dur + 1}s", "--slowloris", str(n),
                           "--slow-readers", str(n), bench.url(srv, "/ping")], hgrm=True)
        bench.with_server(design, NAME, go)
