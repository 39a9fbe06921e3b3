"""compare: two bench runs, figure by figure, with a verdict that knows the noise.

    scripts/bench compare OLD NEW [--figures rps,p99_us,...] [--scenarios throughput,...]
                                  [--threshold PCT] [--noise PCT] [--gate rounds|all]
                                  [--json FILE] [--html FILE]

OLD and NEW are result folders (results/<time>/, with their summary.json).
For every design, scenario and point both ran, and each figure compared,
it prints the old and new value, the change (new / old - 1) and a verdict:
better, worse, or within noise. JSON (--json, '-' for stdout) and a page
(--html) say the same. Exit status: 0; 1 when a figure judged from rounds
on both sides is worse beyond the noise and by more than --threshold (10% by
default; --gate all: any figure, those measured once too), or when a design
that ran in OLD failed in NEW (a regression for CI); 2 on bad arguments. The
gate counts only figures whose noise was measured: on a shared machine, a
figure measured once differs between runs of one commit by factors (the
floors below), so it is shown and judged but fails nothing by default.

The statistic (the noise a change must exceed):
  - each side's value is the median of its rounds (what the bench keeps:
    one disturbed round of a shared machine does not move it);
  - sizes are factors: a change's size is max(new/old, old/new) - 1, so
    that a doubling and a halving are as far (+100%);
  - a figure measured in rounds on both sides (--repeat 2 or more: the
    throughput points, sandbox, anchors, proxy) has as noise the larger of
    the two sides' ratio of its highest to its lowest round, less 1 (the
    noise within a run), plus the figure's drift between runs
    (FLOORS_ROUNDS). The range, not a standard deviation: three rounds give
    no useful deviation, and a shared machine's disturbances are one-sided
    bursts, not a bell curve;
  - a figure measured once (--quick, or a scenario without rounds) has no
    spread of its own: its noise is the figure's floor (FLOORS_ONE).
  - both sets of floors are what two runs of one commit needed on a shared
    2-core machine (see FLOORS_ROUNDS); --noise PCT sets every floor.
A change is better or worse when its size exceeds the noise, else within
noise; its direction says which (req/s up is better, CPU and latency down).
A point where an emulated link was the limit, an open-loop point whose
target rate differs between the runs (the rate scenario aims at 90% of each
run's own throughput), or a run of fewer than MIN_REQUESTS answers is shown
but not judged; where loadgen was the limit, its req/s, latency and success
rate (CLIENT_DECIDED) are not judged, the server's own figures are.
"""

import argparse
import html
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

# figure -> (+1 when higher is better, -1 when lower is, what it is)
FIGURES = {
    "rps": (1, "req/s"),
    "server_cpu_per_req_us": (-1, "server CPU us/req"),
    "server_user_per_req_us": (-1, "server user CPU us/req"),
    "server_system_per_req_us": (-1, "server system CPU us/req"),
    "p50_us": (-1, "p50 us"),
    "p90_us": (-1, "p90 us"),
    "p99_us": (-1, "p99 us"),
    "p999_us": (-1, "p99.9 us"),
    "ctxsw_per_req": (-1, "context switches/req"),
    "peak_rss_kb": (-1, "peak RSS KB"),
    "success_rate": (1, "success rate"),
    "loadgen_cpu_per_req_us": (-1, "loadgen CPU us/req"),
}
DEFAULT_FIGURES = ["rps", "server_cpu_per_req_us", "server_user_per_req_us", "p50_us", "p99_us"]
# What the client's limit decides when loadgen was the limit: the rest (the
# server's CPU, memory and switches per request) are still the server's.
CLIENT_DECIDED = {"rps", "p50_us", "p90_us", "p99_us", "p999_us", "success_rate"}
# How far two runs of one commit drift apart, per figure: for a figure
# measured in rounds, beyond the larger of its two rounds' spreads
# (FLOORS_ROUNDS); for one measured once, in all (FLOORS_ONE). Measured on
# the shared 2-core machine this project is developed on: two pairs of
# `make bench-quick`-size runs (--repeat 3; throughput, rate, hol-wait,
# hol-burn, sandbox, anchors) of one commit, minutes apart, while other jobs
# ran; each floor is the 95th percentile of what that figure needed there,
# rounded up to 5%. Server CPU per request drifts least (15% beyond its
# rounds' spread); req/s and the tails move with the machine's other load
# (a factor of 2.7 for req/s, 10 for a one-off p99): judge a build by its
# CPU per request, measured in rounds. --noise PCT sets every floor (a
# quiet, dedicated machine).
FLOORS_ROUNDS = {"rps": 1.70, "server_cpu_per_req_us": 0.15, "server_system_per_req_us": 0.15,
                 "server_user_per_req_us": 0.80, "p50_us": 0.35, "p90_us": 6.05, "p99_us": 0.90,
                 "p999_us": 1.80, "ctxsw_per_req": 3.70, "peak_rss_kb": 0.15, "success_rate": 0.01,
                 "loadgen_cpu_per_req_us": 0.75}
FLOORS_ONE = {"rps": 1.55, "server_cpu_per_req_us": 1.10, "server_system_per_req_us": 0.45,
              "server_user_per_req_us": 3.85, "p50_us": 0.50, "p90_us": 4.55, "p99_us": 9.45, "p999_us": 3.30,
              "ctxsw_per_req": 0.25, "peak_rss_kb": 0.15, "success_rate": 0.01, "loadgen_cpu_per_req_us": 0.75}
THRESHOLD = 0.10
# A run with fewer answers than this says little: its p99 is one of its ten
# slowest, and a PING stuck behind BURNs answered 3 times or 300 is the same
# design's weakness (hol-burn), not a change.
MIN_REQUESTS = 1000
# Open-loop targets further apart than this are different loads.
RATE_TOLERANCE = 0.10


class Usage(Exception):
    """A bad argument: one line, exit 2."""


def load(folder):
    p = Path(folder)
    if not p.is_dir():
        raise Usage(f"{folder}: not a result folder")
    try:
        s = json.loads((p / "summary.json").read_text())
    except OSError:
        raise Usage(f"{folder}: no summary.json (a folder scripts/bench wrote?)")
    except ValueError as e:
        raise Usage(f"{folder}/summary.json: not JSON ({e})")
    if not isinstance(s, dict) or not isinstance(s.get("runs"), list):
        raise Usage(f"{folder}/summary.json: no runs")
    return s


def values(rec, fig):
    """A record's values of fig: its rounds' when it has several, else the
    kept one; [] when it has none."""
    rounds = [v for v in (rec.get("rounds") or {}).get(fig) or [] if isinstance(v, (int, float))]
    if len(rounds) > 1:
        return rounds
    v = rec["figures"].get(fig)
    return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else []


def factor(a, b):
    """How far apart two positive values are, as a ratio from 1 up: 2 for
    a doubling and for a halving alike."""
    return max(a / b, b / a)


def judge(old, new, fig, floors):
    """The verdict on one figure from its old and new values (each round's,
    or the one): a dict with old, new (medians), change (new / old - 1),
    size, noise, verdict ('better', 'worse', 'within noise'), why. Sizes
    and noise are symmetric factors less 1 (factor()): +100% and -50% are
    the same distance. floors: (FLOORS_ROUNDS, FLOORS_ONE) or their like."""
    out = {"old_rounds": old if len(old) > 1 else None, "new_rounds": new if len(new) > 1 else None}
    # A round whose figure is 0 counted no /proc tick (CPU is sampled in
    # 10 ms ticks) or no answer: it measured nothing, so it is left out.
    old, new = [v for v in old if v > 0] or [0], [v for v in new if v > 0] or [0]
    a, b = statistics.median(old), statistics.median(new)
    out.update(old=a, new=b)
    if a <= 0 or b <= 0:  # nothing measured on a side: no ratio to judge
        out.update(change=None if a <= 0 else b / a - 1, size=None, noise=None, verdict="within noise",
                   why="a value is 0: no ratio")
        return out
    if len(old) > 1 and len(new) > 1:
        spread = max(max(old) / min(old), max(new) / min(new)) - 1
        noise = spread + floors[0][fig]
        why = f"rounds' spread {spread:.0%} + drift {floors[0][fig]:.0%}"
    else:
        noise = floors[1][fig]
        why = f"one round: floor {noise:.0%}" if not (out["old_rounds"] and out["new_rounds"]) else \
            f"one round measured something: floor {noise:.0%}"
    size = factor(a, b) - 1
    if size <= noise:
        verdict = "within noise"
    else:
        verdict = "better" if (b - a) * FIGURES[fig][0] > 0 else "worse"
    out.update(change=b / a - 1, size=size, noise=noise, verdict=verdict, why=why)
    return out


def offered_load_differs(o, n, tolerance):
    """An open-loop point (the rate scenario) whose target rate differs
    between the runs beyond tolerance measured a different load: its
    figures are not comparable (the target is 90% of each run's own
    throughput)."""
    ro, rn = o["figures"].get("rate"), n["figures"].get("rate")
    return bool(ro and rn and factor(ro, rn) - 1 > tolerance)


def compare(old_s, new_s, figures, floors, threshold, gate="rounds"):
    """Every (scenario, design, point) in both runs, each figure judged.
    A regression is a figure worse beyond the noise by more than threshold;
    with gate "rounds" only one judged from rounds on both sides (whose noise
    was measured) counts as one. Returns the report dict (what --json
    writes)."""
    def index(s):
        return {(r["scenario"], r["design"], r["point"]): r for r in s["runs"] if r["point"] != "-" or not r["ok"]}
    oi, ni = index(old_s), index(new_s)
    rows, lost = [], []
    for key, o in oi.items():
        n = ni.get(key)
        if n is None:
            continue
        if o["ok"] and not n["ok"]:
            lost.append({"scenario": key[0], "design": key[1], "point": key[2], "reason": n.get("reason")})
            continue
        if not (o["ok"] and n["ok"]):
            continue
        other_load = offered_load_differs(o, n, RATE_TOLERANCE)
        few = min(o["figures"].get("requests") or 0, n["figures"].get("requests") or 0)
        link = bool(o.get("link_bound") or n.get("link_bound"))
        client = bool(o.get("loadgen_bound") or n.get("loadgen_bound"))
        for fig in figures:
            ov, nv = values(o, fig), values(n, fig)
            if not ov or not nv:
                continue
            j = judge(ov, nv, fig, floors)
            # Not the server's figure, or not the same load: shown, not judged.
            if other_load:
                j.update(verdict="not judged", why=f"the target rate differs: {H.fmt(o['figures']['rate'])} -> "
                                                   f"{H.fmt(n['figures']['rate'])}")
            elif link:
                j.update(verdict="not judged", why="the link was the limit")
            elif client and fig in CLIENT_DECIDED:
                j.update(verdict="not judged", why="loadgen was the limit")
            elif few < MIN_REQUESTS:
                j.update(verdict="not judged", why=f"{few} requests: too few to judge")
            j.update(scenario=key[0], design=key[1], point=key[2], figure=fig)
            j["regression"] = (j["verdict"] == "worse" and j["size"] > threshold
                               and (gate == "all" or bool(j["old_rounds"] and j["new_rounds"])))
            rows.append(j)
    lost = [x for x in lost if not (x["reason"] or "").startswith("skipped: ")]
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("better", "worse", "within noise", "not judged")}
    return {
        "old": {"dir": old_s.get("_dir"), "commit": (old_s.get("env") or {}).get("git_commit"),
                "date": (old_s.get("env") or {}).get("date"), "cflags": (old_s.get("env") or {}).get("cflags"),
                "repeat": (old_s.get("config") or {}).get("repeat")},
        "new": {"dir": new_s.get("_dir"), "commit": (new_s.get("env") or {}).get("git_commit"),
                "date": (new_s.get("env") or {}).get("date"), "cflags": (new_s.get("env") or {}).get("cflags"),
                "repeat": (new_s.get("config") or {}).get("repeat")},
        "statistic": "each side the median of its rounds; a change's size and the noise as factors "
                     "(max(new/old, old/new) - 1); noise = the larger ratio of highest to lowest round of "
                     "the two sides, less 1, plus the figure's drift between runs (FLOORS_ROUNDS); for a "
                     "figure measured once, its floor (FLOORS_ONE)",
        "figures": figures, "floors_rounds": {f: floors[0][f] for f in figures},
        "floors_one": {f: floors[1][f] for f in figures}, "threshold": threshold,
        "counts": counts, "failed_in_new": lost,
        "gate": gate, "regressions": sum(r["regression"] for r in rows) + len(lost),
        "judged_from_rounds": sum(bool(r["old_rounds"] and r["new_rounds"]) and r["verdict"] != "not judged"
                                  for r in rows),
        "rows": rows,
    }


def pct(v):
    return "-" if v is None else f"{v:+.1%}"


def text(rep):
    o, n = rep["old"], rep["new"]
    lines = [f"compare {o['dir']} ({(o['commit'] or '?')[:12]}, {o['cflags']}) -> "
             f"{n['dir']} ({(n['commit'] or '?')[:12]}, {n['cflags']})",
             f"statistic: {rep['statistic']}; exit 1 on worse by more than {rep['threshold']:.0%}", ""]
    rows = [[f"{r['scenario']} {r['point']}", r["design"], FIGURES[r["figure"]][1], H.fmt(r["old"]), H.fmt(r["new"]),
             pct(r["change"]), "-" if r["noise"] is None else f"+-{r['noise']:.0%}",
             r["verdict"].upper() if r["verdict"] in ("better", "worse") else r["verdict"],
             r["why"]] for r in rep["rows"]]
    headers = ["scenario point", "design", "figure", "old", "new", "change", "noise", "verdict", "why"]
    widths = [max([len(h)] + [len(x[i]) for x in rows]) for i, h in enumerate(headers)]
    right = {3, 4, 5, 6}
    fmt_row = lambda cells: "  ".join(c.rjust(w) if i in right else c.ljust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    lines.append(fmt_row(headers))
    lines.append(fmt_row(["-" * w for w in widths]))
    lines += [fmt_row(x) for x in rows]
    for x in rep["failed_in_new"]:
        lines.append(f"FAILED in new: {x['scenario']} {x['point']} {x['design']}: {x['reason']}")
    c = rep["counts"]
    lines.append("")
    lines.append(f"compare: {len(rep['rows'])} figures: {c['better']} better, {c['worse']} worse, "
                 f"{c['within noise']} within noise, {c['not judged']} not judged; "
                 f"{rep['regressions']} regression(s) beyond "
                 f"{rep['threshold']:.0%} ({'from rounds only' if rep['gate'] == 'rounds' else 'any'}; "
                 f"{rep['judged_from_rounds']} figures judged from rounds)"
                 + ("" if not rep["failed_in_new"] else
                                              f" ({len(rep['failed_in_new'])} failed in new)"))
    return "\n".join(lines) + "\n"


def noise(r):
    return "-" if r["noise"] is None else f"&plusmn;{r['noise']:.0%}"


def page(rep):
    """The report as one self-contained HTML page."""
    o, n, c = rep["old"], rep["new"], rep["counts"]
    colour = {"better": "#e8f5e9", "worse": "#fdecea", "within noise": "#fff", "not judged": "#f4f4f4"}
    body = "".join(
        f"<tr style='background:{colour[r['verdict']]}'><td>{html.escape(r['scenario'] + ' ' + r['point'])}</td>"
        f"<td>{html.escape(r['design'])}</td><td>{html.escape(FIGURES[r['figure']][1])}</td>"
        f"<td>{html.escape(H.fmt(r['old']))}</td><td>{html.escape(H.fmt(r['new']))}</td>"
        f"<td>{pct(r['change'])}</td><td>{noise(r)}</td>"
        f"<td><b>{html.escape(r['verdict'])}</b>{' (regression)' if r['regression'] else ''}</td>"
        f"<td>{html.escape(r['why'])}</td></tr>" for r in rep["rows"])
    lost = "".join(f"<li class=fail>failed in new: {html.escape(x['scenario'] + ' ' + x['point'] + ' ' + x['design'])}"
                   f": {html.escape(str(x['reason']))}</li>" for x in rep["failed_in_new"])
    return (f"<!doctype html><html lang=en><meta charset=utf-8><title>bench compare</title>"
            f"<style>{H.PAGE_STYLE}</style><h1>bench compare</h1>"
            f"<p>old: <code>{html.escape(str(o['dir']))}</code> ({html.escape(str(o['commit']))}, "
            f"{html.escape(str(o['cflags']))}, {o['repeat']} round(s))<br>"
            f"new: <code>{html.escape(str(n['dir']))}</code> "
            f"({html.escape(str(n['commit']))}, {html.escape(str(n['cflags']))}, {n['repeat']} round(s))</p>"
            f"<p><b>{c['better']} better, {c['worse']} worse, {c['within noise']} within noise, "
            f"{c['not judged']} not judged; "
            f"{rep['regressions']} regression(s) beyond {rep['threshold']:.0%}.</b> {html.escape(rep['statistic'])}."
            f"</p><ul>{lost}</ul><table><tr><th>scenario point</th><th>design</th><th>figure</th><th>old</th>"
            f"<th>new</th><th>change</th><th>noise</th><th>verdict</th><th>why</th></tr>{body}</table>\n")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise Usage(message)


def main(argv):
    ap = Parser(prog="scripts/bench compare", description="two bench runs, figure by figure")
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--figures", default=",".join(DEFAULT_FIGURES),
                    help=f"comma-separated (default {','.join(DEFAULT_FIGURES)}; known: {', '.join(FIGURES)})")
    ap.add_argument("--scenarios", help="comma-separated: compare only these scenarios (default: every one)")
    ap.add_argument("--threshold", type=float, default=THRESHOLD * 100,
                    help="percent: exit 1 when a figure is worse beyond noise by more than this (10)")
    ap.add_argument("--noise", type=float,
                    help="percent: every figure's floor (default: FLOORS_ROUNDS, FLOORS_ONE)")
    ap.add_argument("--gate", choices=("rounds", "all"), default="rounds",
                    help="which worse figures fail: those judged from rounds on both sides (their noise "
                         "measured; the default), or all, figures measured once too")
    ap.add_argument("--json", help="write the comparison as JSON to this file ('-': stdout, no text)")
    ap.add_argument("--html", help="write the comparison as an HTML page to this file")
    try:
        a = ap.parse_args(argv)
        figures = [f for f in a.figures.split(",") if f]
        bad = [f for f in figures if f not in FIGURES]
        if bad or not figures:
            raise Usage(f"--figures: unknown figure '{bad[0] if bad else ''}' (known: {', '.join(FIGURES)})")
        if not 0 <= a.threshold <= 1000:
            raise Usage("--threshold: a percentage from 0 to 1000")
        if a.noise is not None and not 0 <= a.noise <= 1000:
            raise Usage("--noise: a percentage from 0 to 1000")
        old_s, new_s = load(a.old), load(a.new)
        if a.scenarios:
            want = [x for x in a.scenarios.split(",") if x]
            known = {r["scenario"] for s_ in (old_s, new_s) for r in s_["runs"]}
            bad = [x for x in want if x not in known]
            if bad or not want:
                raise Usage(f"--scenarios: '{bad[0] if bad else ''}' is in neither run (they have: "
                            f"{', '.join(sorted(known))})")
            for s_ in (old_s, new_s):
                s_["runs"] = [r for r in s_["runs"] if r["scenario"] in want]
    except Usage as e:
        print(f"scripts/bench compare: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return 2 if e.code else 0
    old_s["_dir"], new_s["_dir"] = a.old, a.new
    floors = (FLOORS_ROUNDS, FLOORS_ONE) if a.noise is None else \
        tuple({f: a.noise / 100 for f in FIGURES} for _ in range(2))
    rep = compare(old_s, new_s, figures, floors, a.threshold / 100, a.gate)
    if a.json == "-":
        print(json.dumps(rep, indent=1))
    else:
        print(text(rep), end="")
        if a.gate == "rounds" and not rep["judged_from_rounds"]:
            print("compare: no figure was measured in rounds on both sides (--repeat 3 makes them): "
                  "only a design failing in new fails this comparison (--gate all: any worse figure)")
        if a.json:
            H.write_json(a.json, rep)
    if a.html:
        Path(a.html).write_text(page(rep))
    return 1 if rep["regressions"] else 0
