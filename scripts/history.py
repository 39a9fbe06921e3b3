"""history: every bench run's figures in one SQLite database, to follow a
figure across commits.

    scripts/bench history FIGURE [--scenario S] [--design D] [--point P] [--db PATH] [--json]
    scripts/bench history --add DIR [DIR...]     record result folders run before

The bench appends each run (scripts/bench calls record() once summary.json
is written) to $BENCH_HISTORY when set, else to results/history.db when
the run's folder is in results/ (the default, as results/latest): a run
into a folder elsewhere (--out, as the tests do) is not history. A run is
recorded once, by its folder's name.

Tables: runs(id, dir, git_commit, date, quick, repeat, cflags, where) and
figures(run_id, scenario, design, point, figure, value, lo, hi): each
numeric figure of each run record, with lo and hi the lowest and highest
of its rounds when it was measured in rounds (else null).
"""

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as H  # noqa: E402

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY, dir TEXT UNIQUE NOT NULL, git_commit TEXT, date TEXT, quick INTEGER,
  repeat INTEGER, cflags TEXT, "where" TEXT);
CREATE TABLE IF NOT EXISTS figures (
  run_id INTEGER NOT NULL REFERENCES runs(id), scenario TEXT NOT NULL, design TEXT NOT NULL,
  point TEXT NOT NULL, figure TEXT NOT NULL, value REAL, lo REAL, hi REAL,
  PRIMARY KEY (run_id, scenario, design, point, figure));
"""


def db_path(out):
    """Where a run in folder out is recorded, or None (see the head)."""
    if os.environ.get("BENCH_HISTORY"):
        return Path(os.environ["BENCH_HISTORY"])
    results = H.ROOT / "results"
    if Path(out).resolve().parent == results.resolve():
        return results / "history.db"
    return None


def connect(path):
    con = sqlite3.connect(str(path), timeout=10)
    con.executescript(SCHEMA)
    return con


def add(con, out, summary):
    """Insert one run (folder out, its summary) unless its folder's name is
    there already. Returns True when inserted."""
    env, cfg = summary.get("env") or {}, summary.get("config") or {}
    where = "loopback" if not summary.get("topology") else "world"
    with con:
        cur = con.execute('INSERT OR IGNORE INTO runs (dir, git_commit, date, quick, repeat, cflags, "where") '
                          "VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (Path(out).name, env.get("git_commit"), env.get("date"), int(bool(cfg.get("quick"))),
                           cfg.get("repeat"), env.get("cflags"), where))
        if not cur.rowcount:
            return False
        rid = cur.lastrowid
        rows = []
        for r in summary.get("runs") or []:
            if not r.get("ok"):
                continue
            rounds = r.get("rounds") or {}
            for k, v in (r.get("figures") or {}).items():
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                rv = [x for x in rounds.get(k) or [] if x is not None]
                rows.append((rid, r["scenario"], r["design"], r["point"], k, v,
                             min(rv) if rv else None, max(rv) if rv else None))
        con.executemany("INSERT OR REPLACE INTO figures VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return True


def record(out, summary):
    """The bench's hook: append this run to the history database, if it
    has one (db_path). A database that cannot be written is said on stderr,
    not a failed bench: the results folder has every figure anyway."""
    path = db_path(out)
    if path is None:
        return None
    try:
        con = connect(path)
        try:
            added = add(con, out, summary)
        finally:
            con.close()
    except sqlite3.Error as e:
        H.log(f"bench: history: {path}: {e} (not recorded)")
        return None
    if added:
        H.log(f"bench: recorded in {path} (scripts/bench history FIGURE)")
    return path


def query(con, figure, scenario=None, design=None, point=None):
    """[(dir, commit, date, cflags, scenario, design, point, value, lo, hi)] in run order."""
    sql = ("SELECT r.dir, r.git_commit, r.date, r.cflags, f.scenario, f.design, f.point, f.value, f.lo, f.hi "
           "FROM figures f JOIN runs r ON r.id = f.run_id WHERE f.figure = ?")
    args = [figure]
    for col, v in (("scenario", scenario), ("design", design), ("point", point)):
        if v is not None:
            sql += f" AND f.{col} = ?"
            args.append(v)
    return con.execute(sql + " ORDER BY r.date, r.id", args).fetchall()


def table(rows, figure):
    """The rows as text: per scenario and point, a run a line (its date,
    commit and CFLAGS), a design a column; a figure measured in rounds shows its
    rounds' range after it."""
    groups = {}
    for d, commit, date, cflags, sc, design, point, v, lo, hi in rows:
        g = groups.setdefault((sc, point), {"runs": {}, "designs": []})
        if design not in g["designs"]:
            g["designs"].append(design)
        g["runs"].setdefault((date or "", d, commit or "?", cflags or "?"), {})[design] = (v, lo, hi)
    out = []
    for (sc, point), g in groups.items():
        headers = ["date", "commit", "cflags"] + g["designs"]
        body = []
        for (date, _d, commit, cflags), vals in sorted(g["runs"].items()):
            cells = [date.replace("T", " ").rstrip("Z"), commit[:12], cflags.strip()]
            for design in g["designs"]:
                v, lo, hi = vals.get(design, (None, None, None))
                cells.append(H.fmt(v) + (f" [{H.fmt(lo)}-{H.fmt(hi)}]" if lo is not None else ""))
            body.append(cells)
        widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(headers)]
        out.append(f"{figure}, {sc} {point}:")
        out.append("  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
        for c in body:
            out.append("  ".join(x.ljust(w) if i < 3 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths))))
        out.append("")
    return "\n".join(out)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: {message}\n")


def main(argv):
    ap = Parser(prog="scripts/bench history", description="a figure across the recorded bench runs")
    ap.add_argument("figure", nargs="?", help="a figure of summary.json's runs: rps, p99_us, server_cpu_per_req_us...")
    ap.add_argument("--scenario")
    ap.add_argument("--design")
    ap.add_argument("--point")
    ap.add_argument("--db", help="the database (default: $BENCH_HISTORY, else results/history.db)")
    ap.add_argument("--json", action="store_true", help="the rows as JSON")
    ap.add_argument("--add", nargs="+", metavar="DIR", help="record these result folders")
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    path = Path(a.db or os.environ.get("BENCH_HISTORY") or H.ROOT / "results" / "history.db")
    if a.add:
        con = connect(path)
        for d in a.add:
            try:
                summary = json.loads((Path(d) / "summary.json").read_text())
            except (OSError, ValueError) as e:
                print(f"scripts/bench history: {d}: no readable summary.json ({e})", file=sys.stderr)
                return 2
            print(f"{d}: {'recorded' if add(con, Path(d).resolve(), summary) else 'already there'}")
        con.close()
        return 0
    if not a.figure:
        print("scripts/bench history: which figure? (e.g. scripts/bench history rps --scenario throughput)",
              file=sys.stderr)
        return 2
    if not path.exists():
        print(f"scripts/bench history: no history at {path} (a bench run into results/ makes it)", file=sys.stderr)
        return 2
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        known = [r[0] for r in con.execute("SELECT DISTINCT figure FROM figures ORDER BY figure")]
        if a.figure not in known:
            print(f"scripts/bench history: no figure '{a.figure}' recorded (known: {', '.join(known)})",
                  file=sys.stderr)
            return 2
        rows = query(con, a.figure, a.scenario, a.design, a.point)
    except sqlite3.Error as e:
        print(f"scripts/bench history: {path}: {e}", file=sys.stderr)
        return 2
    finally:
        con.close()
    if a.json:
        keys = ("dir", "git_commit", "date", "cflags", "scenario", "design", "point", "value", "lo", "hi")
        print(json.dumps([dict(zip(keys, r)) for r in rows], indent=1))
    elif not rows:
        print(f"no {a.figure} recorded for these filters")
    else:
        print(table(rows, a.figure), end="")
    return 0
