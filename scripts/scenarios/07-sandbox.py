"""A tenant's hello against the same server's native GET /, in alternating
rounds; their ratios are the medians of the rounds' pairs. Only the
sandboxed design has tenants."""

import statistics

import harness as H

NAME = "sandbox"
ABOUT = "a tenant's hello against the same server's native GET /"
QUICK = True
TITLE = "sandbox: tenant hello against native GET / (same server)"
COLUMNS = [
    ("native req/s", "native GET /", "rps"), ("tenant req/s", "tenant /t/hello/", "rps"),
    ("ratio", "tenant /t/hello/", "ratio_to_native"), ("tenant p99 us", "tenant /t/hello/", "p99_us"),
    ("CPU ratio", "tenant /t/hello/", "cpu_ratio_to_native"),
    ("sandbox ns/req", "tenant /t/hello/", "sandbox_ns_per_req"),
    ("restored B/req", "tenant /t/hello/", "restored_bytes_per_req"),
]
BEST = (3, "max")


def run(bench, designs):
    if "sandboxed" in designs:
        bench.with_server("sandboxed", NAME, lambda srv: native_and_tenant(bench, srv))


def native_and_tenant(bench, srv):
    design = "sandboxed"

    def run(path):
        return bench.loadgen(bench.base(64) + [bench.url(srv, path)], srv), None
    got = bench.alternate({"native GET /": lambda rnd: run("/"),
                           "tenant /t/hello/": lambda rnd: run("/t/hello/")})
    bench.keep_median(design, NAME, "native GET /", got["native GET /"])
    tenant = bench.keep_median(design, NAME, "tenant /t/hello/", got["tenant /t/hello/"])
    if tenant is None:
        return
    f = tenant["figures"]
    # Ratios of the rounds' pairs, measured back to back; server CPU
    # per request too: req/s is often the load generator's limit.
    pairs = [(H.figures(n), H.figures(t)) for (n, _), (t, _) in
             zip(got["native GET /"], got["tenant /t/hello/"])
             if isinstance(n, dict) and isinstance(t, dict)]
    rr = [t["rps"] / n["rps"] for n, t in pairs if n["rps"] and t["rps"]]
    cr = [n["server_cpu_per_req_us"] / t["server_cpu_per_req_us"] for n, t in pairs
          if n.get("server_cpu_per_req_us") and t.get("server_cpu_per_req_us")]
    if rr:
        f["ratio_to_native"] = statistics.median(rr)
    if cr:
        f["cpu_ratio_to_native"] = statistics.median(cr)
    try:  # the server's own clock around restore, reseed and call
        m = H.parse_tenant_metrics(bench.http_get(srv, "/metrics"), "hello")
    except OSError:
        m = {}
    if m.get("requests"):
        f["sandbox_ns_per_req"] = m["seconds"] / m["requests"] * 1e9
        f["restored_bytes_per_req"] = m["restored_bytes"] / m["requests"]
