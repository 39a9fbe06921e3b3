"""Your own design: the protocol checks and the core experiments
(docs/LAB.md, conform). `scripts/lab conform NAME` runs it on
bin/server-NAME; --all runs it on bin/server-template, and the protocol
checks on the designs no other experiment runs (ALSO). A design this
machine cannot run (its server exits 2 before it listens, saying why:
server-uring without io_uring) is a skip with its reason."""

import os
import subprocess

import harness as H
import lablib as L

NAME = "conform"
TITLE = "Build your own design: servers/template.c, then scripts/lab conform NAME"
QUESTION = "Does your design speak the protocol, and how does it behave under the core experiments?"
# The designs --all checks beside the template: the protocol checks only.
ALSO = ["uring"]
NEEDS = ["server-template", "server-epoll", "tests/integration-test_servers"] + [f"server-{d}" for d in ALSO]

# The experiments run again with the design in place of iterative.
CORE = ("wait", "slow-reader")


def runnable(design):
    """Raise L.Skip when this machine cannot run the design."""
    try:
        with L.server(design, cpus=None):
            pass
    except H.Unavailable as e:
        raise L.Skip(f"bin/server-{design}: {e}")


def protocol(lab, design, key=""):
    """The protocol conformance checks on bin/server-DESIGN; key names its
    figures and check when it is not the design under test."""
    t = H.BIN / "tests" / "integration-test_servers"
    p = subprocess.run([str(t)], env=dict(os.environ, DESIGNS=design, BIN=str(H.BIN)),
                       capture_output=True, text=True, timeout=300)
    out = (p.stdout + p.stderr).splitlines()
    lab.did(f"DESIGNS={design} {t} (the protocol conformance checks)")
    failed = [line for line in out if "FAILED" in line and "]" in line and "test(s)" not in line]
    lab.fig(**{f"{key}conformance_exit": p.returncode, f"{key}failed_checks": failed[:20]})
    lab.check(f"the protocol conformance checks pass{' on ' + design if key else ''}", p.returncode == 0)


def run(lab, design=None):
    also = ALSO if design is None else []  # --all
    design = design or "template"
    exe = H.BIN / f"server-{design}"
    if not exe.exists():
        lab.check(f"bin/server-{design} exists (servers/{design}.c, then make)", False)
        return
    t = H.BIN / "tests" / "integration-test_servers"
    if not t.exists():
        lab.check(f"{t} exists (make lab builds it)", False)
        return
    runnable(design)
    protocol(lab, design)
    for d in also:
        try:
            runnable(d)
            protocol(lab, d, key=f"{d}_")
        except L.Skip as e:
            lab.fig(**{f"{d}_skipped": str(e)})
    for name in CORE:
        sub = L.Lab(lab.name)
        L.experiment(name).run(sub, design=design, other="epoll")
        for obs, held in sub.checks:
            lab.figures.setdefault("core_experiments", []).append({"observation": obs, "held": held})
        lab.ran += sub.ran
        lab.figures.update(sub.figures)
    lab.fig(note="the core experiments show how your design behaves; they are not pass/fail for it")
