"""world: hosts, links and limits for the bench and the lab.

A host is a network namespace with one address (10.77.0.N, private: it exists
only inside the namespaces made here, none of which has a route out) and a
cgroup per controller: cpu (a quota in cores), cpuacct (its CPU time),
memory (a limit; OOM kills counted) and, when asked, cpuset (its CPUs). A link
joins two hosts: a TUN device in each namespace, addresses point to point,
and bin/world-link between them (delay, jitter, loss, rate, queue; see
world/README.md). Processes run in a host through `ip netns exec`, attached
to its cgroups before they exec. A local host (`w.host(name, local=True)`)
is the cgroups alone: its processes stay on this machine's loopback, with
limits and no links.

    with World() as w:
        a, b = w.host("client"), w.host("server", cpu_quota=0.5, mem_limit="64M")
        w.link(a, b, rtt="20ms", rate="100mbit", loss="0.1%")
        srv = b.popen(["bin/server-epoll", "--port", "8080"])
        a.run(["bin/loadgen", f"http://{b.addr}:8080/"])

Everything is named world-<pid>-<start>-<name>: the runner's PID and its start
time (so a reused PID is not mistaken for the owner). Leaving the `with` block
stops the links and the hosts' processes and removes namespaces and cgroups;
when the runner is killed instead, its links and processes die with it
(PR_SET_PDEATHSIG) and the next World() (or `scripts/world.py cleanup`)
removes what is left of any run whose owner is gone (cleanup_stale).

Run as a script, it is also the probes the tests and the bench measure links
with: `world.py rtt HOST PORT N`, `udp-echo PORT`, `sink PORT SECONDS`,
`send HOST PORT SECONDS`, `udp-count PORT SECONDS`, `udp-send HOST PORT N`,
`cleanup`.
"""

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETNS_DIR = Path("/run/netns")
CGROOT = Path("/sys/fs/cgroup")
PREFIX = "world-"
NAME_RE = re.compile(r"^world-(\d+)-(\d+)-")
HOST_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")
PR_SET_PDEATHSIG = 1


class WorldError(Exception):
    pass


def _sh(*argv, check=True, quiet=False):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise WorldError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")
    return r


def _start_time(pid):
    """The start time of pid (clock ticks since boot), or None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def owner_alive(pid, start):
    return _start_time(pid) == start


def cgroup_version():
    """2 on a unified hierarchy, 1 when the v1 controllers are mounted."""
    if (CGROOT / "cpu" / "cpu.cfs_quota_us").exists():
        return 1
    if (CGROOT / "cgroup.controllers").exists():
        return 2
    return 0


def why_not():
    """Why this machine cannot make worlds (None when it can)."""
    if os.geteuid() != 0:
        return "not root (namespaces, TUN and cgroups need it)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if not shutil.which("ip"):
        return "no `ip` (iproute2)"
    if cgroup_version() == 0:
        return "no cgroup v1 cpu controller nor cgroup v2"
    r = _sh("ip", "netns", "add", f"{PREFIX}probe-{os.getpid()}", check=False)
    if r.returncode != 0:
        return f"no network namespaces ({r.stderr.strip()})"
    _sh("ip", "netns", "del", f"{PREFIX}probe-{os.getpid()}", check=False)
    return None


def parse_size(s):
    """'64M' -> bytes (k, m, g: powers of 1024); an int is bytes."""
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"(\d+)([kmgKMG]?)", str(s))
    if not m:
        raise WorldError(f"bad size {s!r} (e.g. 64M)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def parse_duration_ms(s):
    """'20ms', '1s', '250us', or a number of milliseconds -> float ms."""
    if isinstance(s, (int, float)):
        if s < 0:
            raise WorldError(f"negative duration {s}")
        return float(s)
    m = re.fullmatch(r"(\d+(?:\.\d*)?)(us|ms|s)", str(s))
    if not m:
        raise WorldError(f"bad duration {s!r} (e.g. 20ms)")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)]


# --- cgroups ---------------------------------------------------------------


class Cgroups:
    """The cgroups of one name: v1, a directory per controller; v2, one."""

    def __init__(self, name, version, cpuset=False, ctl=None):
        self.version = version
        if version == 1:
            ctl = ctl or ["cpu", "cpuacct", "memory"] + (["cpuset"] if cpuset else [])
            self.dirs = {c: CGROOT / c / name for c in ctl}
        else:
            self.dirs = {"all": CGROOT / name}
        for d in self.dirs.values():
            d.mkdir(exist_ok=True)
        if version == 2:
            # Controllers must be enabled in the parent for the child to have them.
            want = " ".join("+" + c for c in ("cpu", "memory", "cpuset"))
            try:
                (CGROOT / "cgroup.subtree_control").write_text(want)
            except OSError:
                pass

    def _file(self, ctl, v1name, v2name):
        return self.dirs["all"] / v2name if self.version == 2 else self.dirs[ctl] / v1name

    def set_cpus(self, cpus):
        if self.version == 1:
            d = self.dirs["cpuset"]
            (d / "cpuset.mems").write_text((CGROOT / "cpuset" / "cpuset.mems").read_text())
            (d / "cpuset.cpus").write_text(cpus)
        else:
            (self.dirs["all"] / "cpuset.cpus").write_text(cpus)

    def set_quota(self, cores, period_us=100_000):
        quota = int(cores * period_us)
        if self.version == 1:
            (self.dirs["cpu"] / "cpu.cfs_period_us").write_text(str(period_us))
            (self.dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (self.dirs["all"] / "cpu.max").write_text(f"{quota} {period_us}")

    def set_memory(self, nbytes):
        if self.version == 1:
            d = self.dirs["memory"]
            (d / "memory.limit_in_bytes").write_text(str(nbytes))
            sw = d / "memory.memsw.limit_in_bytes"
            if sw.exists():  # no escape into swap: the limit is the limit
                sw.write_text(str(nbytes))
        else:
            (self.dirs["all"] / "memory.max").write_text(str(nbytes))
            (self.dirs["all"] / "memory.swap.max").write_text("0")

    def procs_files(self):
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def pids(self):
        out = set()
        for f in self.procs_files():
            try:
                out.update(int(x) for x in Path(f).read_text().split())
            except OSError:
                pass
        return out

    def oom_kills(self):
        """Processes the memory limit killed so far."""
        f = self._file("memory", "memory.oom_control", "memory.events")
        try:
            for line in f.read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
        except OSError:
            pass
        return 0

    def cpu_seconds(self):
        """CPU time used by the group's processes so far."""
        if self.version == 1:
            return int((self.dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
        for line in (self.dirs["all"] / "cpu.stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "usage_usec":
                return int(v) / 1e6
        return 0.0

    def throttled(self):
        """Periods in which the CPU quota stopped the group (cpu.stat)."""
        f = self._file("cpu", "cpu.stat", "cpu.stat")
        try:
            for line in f.read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == "nr_throttled":
                    return int(v)
        except OSError:
            pass
        return 0

    def memory_peak(self):
        f = self._file("memory", "memory.max_usage_in_bytes", "memory.peak")
        try:
            return int(f.read_text())
        except (OSError, ValueError):
            return None

    def destroy(self, timeout=5.0):
        """Kill what is left in the group and remove it. Returns problems."""
        problems = []
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                problems.append(f"processes {sorted(pids)} outlived SIGKILL")
                break
            time.sleep(0.02)
        for d in self.dirs.values():
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last task is reaped
                    time.sleep(0.02)
            else:
                problems.append(f"cannot remove {d}")
        return problems


def _attach(files, die_with_parent=True):
    """A preexec_fn: join the cgroups (before exec: the command's first
    instruction already counts), and die with the runner."""

    def pre():
        pid = str(os.getpid())
        for f in files:
            with open(f, "w") as fh:
                fh.write(pid)
        if die_with_parent:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return pre


# --- hosts and links -------------------------------------------------------


class Host:
    """A namespace and its cgroups; or, local, the cgroups alone: its
    processes share the runner's network (loopback, 127.0.0.1) and have no
    links, for limits where the packets need no emulator (which would take
    a core of its own at tens of thousands of requests a second)."""

    def __init__(self, world, name, index, cpus=None, cpu_quota=None, mem_limit=None, local=False):
        self.world = world
        self.name = name
        self.ns = None if local else f"{world.prefix}{name}"
        self.addr = "127.0.0.1" if local else f"10.77.0.{index}"
        self.limits = {"cpus": cpus, "cpu_quota": cpu_quota, "mem_limit": mem_limit}
        self.procs = []
        if not local:
            _sh("ip", "netns", "add", self.ns)
        self.cg = Cgroups(f"{world.prefix}{name}", world.cgv, cpuset=cpus is not None)
        if not local:
            # IPv6 would send its own packets (router and neighbour
            # solicitations) over the links and into the counts.
            _sh("ip", "netns", "exec", self.ns, "sysctl", "-q", "-w",
                "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
            _sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        if cpus is not None:
            self.cg.set_cpus(str(cpus))
        if cpu_quota is not None:
            if cpu_quota <= 0:
                raise WorldError(f"cpu quota {cpu_quota}: must be > 0 cores")
            self.cg.set_quota(cpu_quota)
        if mem_limit is not None:
            self.cg.set_memory(parse_size(mem_limit))

    def popen(self, argv, **kw):
        """Start argv in this host (its namespace and cgroups); the Popen's
        pid is the command's. It is killed when the world closes."""
        netns = ["ip", "netns", "exec", self.ns] if self.ns else []
        p = subprocess.Popen([*netns, *map(str, argv)], preexec_fn=_attach(self.cg.procs_files()), **kw)
        self.procs.append(p)
        return p

    def run(self, argv, timeout=None, **kw):
        """Run argv in this host to its end: a CompletedProcess (text output)."""
        p = self.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    def oom_kills(self):
        return self.cg.oom_kills()

    def cpu_seconds(self):
        return self.cg.cpu_seconds()

    def throttled(self):
        return self.cg.throttled()

    def describe(self):
        return {"name": self.name, "netns": self.ns, "addr": self.addr, **self.limits,
                "oom_kills": self.oom_kills(), "throttled": self.throttled(),
                "memory_peak": self.cg.memory_peak()}


# Packets a TUN device holds for the emulator to read (the kernel's default
# is 500). Past it the device drops: loss nobody asked for. A proxy's 64 KiB
# answers at c64 on a busy machine lost 5% of their segments there, every
# retransmission of the run (`ip -s link` in the hosts). 4,096 holds the
# bursts of 64 connections; what still overflows is counted (tun_drop).
TUN_QUEUE = 4096


class Link:
    def __init__(self, world, a, b, index, args, desc, cpu=None):
        self.a, self.b, self.desc = a, b, desc
        self.dev = dev = f"wl{index}"
        for h, peer in ((a, b), (b, a)):
            _sh("ip", "-n", h.ns, "tuntap", "add", "dev", dev, "mode", "tun")
            _sh("ip", "-n", h.ns, "addr", "add", f"{h.addr}/32", "peer", f"{peer.addr}/32",
                "dev", dev)
            _sh("ip", "-n", h.ns, "link", "set", dev, "txqueuelen", str(TUN_QUEUE), "up")
        self.out = open(world.dir / f"link{index}.out", "w+")
        self.err = open(world.dir / f"link{index}.err", "w+")
        argv = [str(world.bin / "world-link"), "--a", f"{a.ns}:{dev}", "--b", f"{b.ns}:{dev}",
                "--with-parent", "--realtime", *args]
        if cpu is not None:
            argv += ["--cpu", str(cpu)]
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=self.err,
                                     preexec_fn=_attach(world.links_cg.procs_files(), False))
        self.final = None
        # Up when both ends have a carrier: the emulator has attached.
        deadline = time.monotonic() + 5
        while True:
            if self.proc.poll() is not None:
                self.err.seek(0)
                raise WorldError(f"world-link exited {self.proc.returncode}: "
                                 f"{self.err.read().strip()}")
            ups = [_sh("ip", "-n", h.ns, "-o", "link", "show", dev).stdout for h in (a, b)]
            if all("LOWER_UP" in u for u in ups):
                break
            if time.monotonic() > deadline:
                raise WorldError(f"link {a.name}-{b.name}: no carrier after 5 s")
            time.sleep(0.01)

    def _last_json(self):
        self.out.seek(0)
        lines = [ln for ln in self.out.read().splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else None

    def _with_tun_drops(self, st):
        """st with each direction's tun_drop: packets the sending end's TUN
        device dropped because the emulator had not read them (its queue was
        full), which the emulator itself never sees."""
        if st is None:
            return None
        for d, h in (("ab", self.a), ("ba", self.b)):
            r = subprocess.run(["ip", "-n", h.ns, "-s", "-j", "link", "show", self.dev],
                               capture_output=True, text=True)
            try:
                st[d]["tun_drop"] = json.loads(r.stdout)[0]["stats64"]["tx"]["dropped"]
            except (ValueError, LookupError):
                st[d]["tun_drop"] = None  # the host is gone
        return st

    def stats(self):
        """The emulator's counters and CPU now (SIGUSR1, then its line),
        and each direction's tun_drop."""
        if self.proc.poll() is not None:
            return self.final or self._with_tun_drops(self._last_json())
        self.out.seek(0, os.SEEK_END)
        before = self.out.tell()
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            self.out.seek(0, os.SEEK_END)
            if self.out.tell() > before:
                self.out.seek(before)
                text = self.out.read()
                if text.endswith("\n"):
                    return self._with_tun_drops(json.loads(text.splitlines()[-1]))
            time.sleep(0.005)
        raise WorldError("world-link did not answer SIGUSR1")

    def stop(self):
        drops = self._with_tun_drops({"ab": {}, "ba": {}})
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.final = self._last_json()
        if self.final:
            for d in ("ab", "ba"):
                self.final[d]["tun_drop"] = drops[d]["tun_drop"]
        return self.final


class World:
    """A set of hosts and links; a context manager that removes them all."""

    def __init__(self, bin_dir=None, link_cpu=None, clean_stale=True):
        self.cgv = cgroup_version()
        why = why_not()
        if why:
            raise WorldError(f"cannot make a world here: {why}")
        if clean_stale:
            cleanup_stale()
        self.pid = os.getpid()
        self.run_id = f"{self.pid}-{_start_time(self.pid)}"
        self.prefix = f"{PREFIX}{self.run_id}-"
        self.bin = Path(bin_dir or os.environ.get("BIN", ROOT / "bin")).resolve()
        if not (self.bin / "world-link").exists():
            raise WorldError(f"{self.bin}/world-link is not built (make)")
        self.link_cpu = link_cpu
        self.dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{self.run_id}."))
        self.hosts, self.links = {}, []
        # Not in a v1 cpu group: a task there cannot be SCHED_FIFO (its
        # rt_runtime_us is 0), and the links run so (--realtime).
        self.links_cg = Cgroups(f"{self.prefix}links", self.cgv, ctl=["cpuacct", "memory"])

    def host(self, name, cpus=None, cpu_quota=None, mem_limit=None, local=False):
        """A host (Host: local, limits without a namespace)."""
        if not HOST_RE.match(name) or name == "links" or name in self.hosts:
            raise WorldError(f"bad or repeated host name {name!r} ([a-z][a-z0-9]*)")
        h = Host(self, name, len(self.hosts) + 1, cpus, cpu_quota, mem_limit, local)
        self.hosts[name] = h
        return h

    def link(self, a, b, rtt=None, delay=None, jitter=None, jitter_dist=None, loss=None,
             rate=None, queue=None, queue_bytes=None, seed=0, reorder=False, cpu=None):
        """Join hosts a and b. rtt ('20ms') sets the one-way delay to half
        of it each way; the others are world-link's flags (X or 'a->b/b->a')."""
        if not (a.ns and b.ns):
            raise WorldError(f"{(b if a.ns else a).name} is a local host: it has no links")
        if rtt is not None:
            if delay is not None:
                raise WorldError("rtt and delay: one or the other")
            delay = str(int(round(parse_duration_ms(rtt) * 500))) + "us"
        args = []
        for flag, v in (("--delay", delay), ("--jitter", jitter), ("--jitter-dist", jitter_dist),
                        ("--loss", loss), ("--rate", rate), ("--queue", queue),
                        ("--queue-bytes", queue_bytes)):
            if v is not None:
                args += [flag, str(v)]
        args += ["--seed", str(seed)] + (["--reorder"] if reorder else [])
        desc = {"a": a.name, "b": b.name, "rtt": rtt, "delay": delay, "jitter": jitter,
                "jitter_dist": jitter_dist, "loss": loss, "rate": rate, "queue": queue,
                "queue_bytes": queue_bytes, "seed": seed}
        lk = Link(self, a, b, len(self.links), args, desc,
                  cpu=self.link_cpu if cpu is None else cpu)
        self.links.append(lk)
        return lk

    def describe(self):
        return {"hosts": [h.describe() for h in self.hosts.values()],
                "links": [dict(lk.desc, stats=lk.final) for lk in self.links]}

    def close(self):
        problems = []
        for lk in self.links:
            lk.stop()
            lk.out.close()
            lk.err.close()
        for h in self.hosts.values():
            for p in h.procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
            problems += h.cg.destroy()
            if h.ns:
                problems += _kill_netns(h.ns)
        problems += self.links_cg.destroy()
        shutil.rmtree(self.dir, ignore_errors=True)
        if problems:
            raise WorldError("; ".join(problems))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _kill_netns(ns):
    """Kill what still runs in namespace ns and delete it. Returns problems."""
    r = _sh("ip", "netns", "pids", ns, check=False)
    for p in r.stdout.split():
        try:
            os.kill(int(p), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    r = _sh("ip", "netns", "del", ns, check=False)
    if r.returncode != 0 and (NETNS_DIR / ns).exists():
        return [f"ip netns del {ns}: {r.stderr.strip()}"]
    return []


def leftovers(run_id=None):
    """Names of namespaces and cgroups of our runs (of run_id only, if given)."""
    pre = f"{PREFIX}{run_id}-" if run_id else PREFIX
    names = []
    if NETNS_DIR.is_dir():
        names += [f"netns {n}" for n in os.listdir(NETNS_DIR) if n.startswith(pre)]
    roots = [CGROOT / c for c in ("cpu", "cpuacct", "memory", "cpuset")] + [CGROOT]
    for r in roots:
        if r.is_dir():
            names += [f"cgroup {r / n}" for n in os.listdir(r) if n.startswith(pre)]
    return sorted(names)


def cleanup_stale():
    """Remove the namespaces and cgroups of runs whose owner is dead (its PID
    gone, or now another process). Returns what was removed."""
    removed = []
    dead = {}

    def is_dead(name):
        m = NAME_RE.match(name)
        if not m:
            return False
        key = (int(m.group(1)), int(m.group(2)))
        if key not in dead:
            dead[key] = not owner_alive(*key)
        return dead[key]

    cgv = cgroup_version()
    roots = [CGROOT / c for c in ("cpu", "cpuacct", "memory", "cpuset")] if cgv == 1 else [CGROOT]
    for r in roots:
        if not r.is_dir():
            continue
        for n in os.listdir(r):
            if is_dead(n) and (r / n).is_dir():
                cg = Cgroups.__new__(Cgroups)
                cg.version, cg.dirs = cgv, {"x": r / n}
                cg.destroy()
                removed.append(str(r / n))
    if NETNS_DIR.is_dir():
        for n in os.listdir(NETNS_DIR):
            if is_dead(n):
                _kill_netns(n)
                removed.append(f"netns {n}")
    for d in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        m = re.match(r"^world-(\d+)-(\d+)\.", d.name)
        if m and not owner_alive(int(m.group(1)), int(m.group(2))):
            shutil.rmtree(d, ignore_errors=True)
    return removed


# --- probes: run inside hosts by the tests and the bench --------------------


def probe_udp_echo(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(port)))
    print("listening", flush=True)
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)


def probe_rtt(host, port, n, gap=0.01):
    """n UDP round trips of 32 bytes, one at a time, gap s apart: JSON with
    each sample in ms and their median."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((host, int(port)))
    samples = []
    for i in range(int(n)):
        msg = i.to_bytes(4, "big") * 8
        t0 = time.perf_counter()
        s.send(msg)
        while s.recv(2048) != msg:
            pass
        samples.append((time.perf_counter() - t0) * 1e3)
        time.sleep(float(gap))
    print(json.dumps({"median_ms": statistics.median(samples), "samples_ms": samples}))


def probe_sink(port, seconds, warmup=0.5):
    """Accept one TCP connection and count what arrives: JSON with the bytes
    and seconds after the warm-up (slow start) to the end or the sender's
    close."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", int(port)))
    ls.listen(1)
    print("listening", flush=True)
    c, _ = ls.accept()
    c.settimeout(float(seconds) + 5)
    start = time.monotonic()
    t0, n0, total = None, 0, 0
    end = start + float(seconds)
    while time.monotonic() < end:
        b = c.recv(1 << 16)
        if not b:
            break
        total += len(b)
        if t0 is None and time.monotonic() - start >= float(warmup):
            t0, n0 = time.monotonic(), total
    t1 = time.monotonic()
    print(json.dumps({"bytes": total - n0, "seconds": t1 - (t0 or start),
                      "mss": c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)}))


def probe_send(host, port, seconds):
    s = socket.create_connection((host, int(port)), timeout=10)
    buf = b"x" * (1 << 16)
    end = time.monotonic() + float(seconds)
    try:
        while time.monotonic() < end:
            s.sendall(buf)
    except OSError:
        pass  # the sink has counted enough and gone


def probe_udp_count(port, seconds):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind(("0.0.0.0", int(port)))
    print("listening", flush=True)
    s.settimeout(float(seconds))
    n = 0
    try:
        while True:
            s.recv(2048)
            n += 1
    except socket.timeout:
        pass
    print(json.dumps({"received": n}))


def probe_udp_send(host, port, n, burst=50, gap=0.002):
    """n datagrams of 64 bytes, in bursts of `burst` `gap` seconds apart
    (the TUN's queue holds TUN_QUEUE)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, int(port)))
    burst, gap = int(burst), float(gap)
    for i in range(int(n)):
        s.send(b"p" * 64)
        if i % burst == burst - 1:
            time.sleep(gap)


PROBES = {"udp-echo": probe_udp_echo, "rtt": probe_rtt, "sink": probe_sink,
          "send": probe_send, "udp-count": probe_udp_count, "udp-send": probe_udp_send}


def main(argv):
    if len(argv) >= 1 and argv[0] == "cleanup":
        for r in cleanup_stale():
            print("removed", r)
        return 0
    if len(argv) >= 1 and argv[0] in PROBES:
        try:
            PROBES[argv[0]](*argv[1:])
        except TypeError as e:
            print(f"world.py {argv[0]}: {e}", file=sys.stderr)
            return 2
        return 0
    print("usage: world.py cleanup | " + " | ".join(PROBES) + " ARGS...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
