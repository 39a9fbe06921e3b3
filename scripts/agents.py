#!/usr/bin/python3
"""agents: load from several hosts at once, merged exactly (issue 13).

N loadgen agents are started against one target, each at 1/N of the rate
and of the connections, and all begin at the same wall-clock instant
(`--start-at`, far enough ahead for the slowest to be started); their JSON
results are combined by `loadgen merge` (histograms added bucket by bucket,
never percentiles averaged; see results/SCHEMA.md). An agent runs:

- in a world host (scripts/world.py: Host objects, from Python), or
- through a command template on real machines, `{host}` and `{cmd}`
  standing for the machine and the agent's command line, e.g.
  `ssh {host} {cmd}` (the JSON comes back on the command's stdout, so the
  template's command must pass stdout through), or `sh -c {cmd}` here.

    scripts/agents.py --hosts h1,h2,h3 --agent-cmd 'ssh {host} {cmd}' \\
        -R 30000 -c 300 --out merged.json -- -d 10s http://10.0.0.5:8080/
    scripts/agents.py --agents 3 -R 3000 -c 12 --out m.json -- -d 2s http://127.0.0.1:8080/

The clocks of real machines must agree (NTP) to well within a second for
their windows to line up. Bad flags: one line on stderr, exit 2.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402


def split(total, n):
    """total as n integers as even as possible, summing to total."""
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def template_argv(template, host, cmd):
    """The argv of one agent's command template: each word of the template
    (split as the shell would) with {host} replaced by host and {cmd} by
    the agent's command line quoted as one word (for `sh -c` and ssh alike,
    which hand it to a shell)."""
    words = shlex.split(template)
    if not any("{cmd}" in w for w in words):
        raise ValueError(f"agent command template {template!r} has no {{cmd}}")
    line = shlex.join(cmd)
    return [w.replace("{host}", host).replace("{cmd}", line) for w in words]


def merge(files, out):
    """`loadgen merge` of the agents' JSON files into out: the merged JSON.
    Raises HarnessError with its error line."""
    r = subprocess.run([str(H.BIN / "loadgen"), "merge", str(out), *map(str, files)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise H.HarnessError(f"loadgen merge: {r.stderr.strip()}")
    return json.loads(Path(out).read_text())


def run_agents(target, places, args=(), rate=None, connections=None, agent_cmd=None,
               start_in_s=None, budget_s=120.0, loadgen=None, workdir=None):
    """Run one loadgen agent per place against target, all starting at one
    instant, and merge their results. places: world Hosts, or host names
    (strings) for agent_cmd, a template with {host} and {cmd}. rate (-R)
    and connections (-c), when given, are split among the agents; args are
    every agent's other loadgen options (-d, -t, --timeout...). Returns
    (merged JSON, [each agent's JSON]). Raises HarnessError naming the
    agent that failed; every agent is killed by PID on the way out.
    A place that is a name, without agent_cmd, is this machine."""
    n = len(places)
    if n < 1:
        raise H.HarnessError("no agents")
    loadgen = str(loadgen or H.BIN / "loadgen")
    if start_in_s is None:  # time for every agent to be started (ssh connects)
        start_in_s = 3.0 if agent_cmd else 1.0
    start_at = int(time.time() * 1000 + start_in_s * 1000)
    rates = split(int(rate), n) if rate is not None else [None] * n
    conns = split(int(connections), n) if connections is not None else [None] * n
    if connections is not None and min(conns) < 1:
        raise H.HarnessError(f"{connections} connections for {n} agents: at least one each")
    tmp = Path(workdir or tempfile.mkdtemp(prefix="agents-"))
    tmp.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for i, place in enumerate(places):
            cmd = [loadgen, "--quiet", "--json", "/dev/stdout", "--start-at", str(start_at)]
            if rates[i] is not None:
                cmd += ["-R", str(rates[i])]
            if conns[i] is not None:
                cmd += ["-c", str(conns[i])]
            cmd += [str(a) for a in args] + [target]
            out, err = open(tmp / f"agent{i}.json", "wb"), open(tmp / f"agent{i}.err", "wb")
            try:
                if agent_cmd:
                    procs.append(H.spawn(template_argv(agent_cmd, str(place), cmd), stdout=out,
                                         stderr=err))
                else:  # a world host, or (a name) this machine
                    host = place if hasattr(place, "popen") else None
                    procs.append(H.spawn(cmd, host, stdout=out, stderr=err))
            except OSError as e:
                raise H.HarnessError(f"agent {i} ({place}): cannot start: {e}")
            finally:
                out.close()
                err.close()
        deadline = time.monotonic() + start_in_s + budget_s
        for i, p in enumerate(procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise H.HarnessError(f"agent {i} ({places[i]}) did not finish within {budget_s:.0f} s")
            if p.returncode != 0:
                why = (tmp / f"agent{i}.err").read_text(errors="replace").strip().splitlines()
                raise H.HarnessError(f"agent {i} ({places[i]}) exited {p.returncode}: "
                                     f"{why[-1] if why else 'no message'}")
        runs = []
        for i in range(n):
            try:
                runs.append(json.loads((tmp / f"agent{i}.json").read_text()))
            except ValueError as e:
                raise H.HarnessError(f"agent {i} ({places[i]}): its output is not JSON: {e}")
        return merge([tmp / f"agent{i}.json" for i in range(n)], tmp / "merged.json"), runs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if workdir is None:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: {message}\n")


def main(argv):
    ap = Parser(prog="scripts/agents.py", description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, help="N agents on this machine")
    ap.add_argument("--hosts", help="comma-separated machines, one agent each (with --agent-cmd)")
    ap.add_argument("--agent-cmd", help="command template with {host} and {cmd}, e.g. 'ssh {host} {cmd}'")
    ap.add_argument("--loadgen", help="loadgen's path where the agents run (default: this checkout's)")
    ap.add_argument("-R", "--rate", type=int, help="total requests/s, split among the agents")
    ap.add_argument("-c", "--connections", type=int, help="total connections, split among the agents")
    ap.add_argument("--start-in", type=float, help="seconds from now to the common start")
    ap.add_argument("--budget", type=float, default=600, help="seconds the agents may take")
    ap.add_argument("--out", required=True, help="the merged JSON")
    ap.add_argument("loadgen_args", nargs="+", help="-- then each agent's loadgen options and TARGET")
    a = ap.parse_args(argv)
    if (a.agents is None) == (a.hosts is None):
        ap.error("one of --agents N or --hosts H1,H2,...")
    if a.hosts is not None and not a.agent_cmd:
        ap.error("--hosts needs --agent-cmd")
    if a.agents is not None and not 1 <= a.agents <= 256:
        ap.error("--agents must be from 1 to 256")
    if a.rate is not None and a.rate < 1 or a.connections is not None and a.connections < 1:
        ap.error("-R and -c must be at least 1")
    if a.start_in is not None and not 0 <= a.start_in <= 600:
        ap.error("--start-in must be from 0 to 600 seconds")
    places = [h for h in a.hosts.split(",") if h] if a.hosts else [f"local{i}" for i in range(a.agents)]
    if a.agent_cmd:
        try:
            template_argv(a.agent_cmd, "h", ["x"])
        except ValueError as e:
            ap.error(str(e))
    *opts, target = a.loadgen_args
    try:
        merged, runs = run_agents(target, places, opts, rate=a.rate, connections=a.connections,
                                  agent_cmd=a.agent_cmd, start_in_s=a.start_in, budget_s=a.budget,
                                  loadgen=a.loadgen)
    except H.HarnessError as e:
        print(f"scripts/agents.py: {e}", file=sys.stderr)
        return 1
    H.write_json(a.out, merged)
    lat = merged.get("latency_us") or {}
    print(f"{len(runs)} agents: {merged['requests']} requests, {merged['rps']:.1f} req/s, "
          f"p50 {lat.get('p50')} us, p99 {lat.get('p99')} us; each: "
          + ", ".join(f"{r['rps']:.1f}" for r in runs) + " req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
