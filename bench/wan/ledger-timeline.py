#!/usr/bin/env python3
"""Where a run's rounds spent their time, from the coordinator's ledger tables.

    bench/wan/ledger-timeline.py RUN/state/coordinator.sqlite ...

(scripts/wan-bench.sh --keep keeps each run's state.) Prints, per round, when
it opened, its first and last accepted commitments, the start of its reveal
phase (reveal deadline minus the run's `round.reveal_ms`, read from the run's
configuration as the coordinator stored it), its last reveal
and its close (ms from the first round's opening), with its audits (answered,
decided); then the medians: the slowest worker's lag (first to last
commitment), the reveals, and the close after the last reveal; and how long
each round's close came after each worker's commitment to it, which a
pipeline must hide behind training (under `[outer] delay = d` a worker
trains d more rounds before it needs that round's result).
"""
import json, sqlite3, sys, statistics


def reveal_ms(c):
    """The run's reveal window: `round.reveal_ms` of the configuration the
    coordinator stored when it created the run (absent: the default)."""
    (config_json,) = c.execute("select config_json from run").fetchone()
    return json.loads(config_json).get("round", {}).get("reveal_ms", 30000)


for db in sys.argv[1:]:
    c = sqlite3.connect(db)
    REVEAL_MS = reveal_ms(c)
    print("==", db, f"(reveal window {REVEAL_MS} ms)")
    rows = c.execute("select id, opened_unix_ms, reveal_deadline_unix_ms, closed_unix_ms from rounds order by id").fetchall()
    t0 = rows[0][1]
    segs = {"commit spread (first->last)": [], "last commit->reveal start": [], "reveal start->last reveal": [], "last reveal->closed": [], "audit answered->decided": [], "open->first commit": []}
    hide = []
    print("round opened  firstC  lastC  revealStart lastReveal closed  (ms from run start) audits")
    for rid, opened, rdl, closed in rows:
        cs = [r[0] for r in c.execute("select received_unix_ms from commitments where round=? and status='accepted'", (rid,))]
        rs = [r[0] for r in c.execute("select received_unix_ms from reveals where round=?", (rid,))]
        au = c.execute("select answered_unix_ms, decided_unix_ms from audits where round=?", (rid,)).fetchall()
        rstart = rdl - REVEAL_MS if rdl else None
        f = lambda x: "-" if x is None else str(x - t0)
        print(rid, f(opened), f(min(cs) if cs else None), f(max(cs) if cs else None), f(rstart), f(max(rs) if rs else None), f(closed), au and [(f(a), f(d)) for a, d in au])
        if cs and rs and closed and rstart:
            segs["open->first commit"].append(min(cs) - opened)
            segs["commit spread (first->last)"].append(max(cs) - min(cs))
            segs["last commit->reveal start"].append(rstart - max(cs))
            segs["reveal start->last reveal"].append(max(rs) - rstart)
            segs["last reveal->closed"].append(closed - max(rs))
        for a, d in au:
            if a and d: segs["audit answered->decided"].append(d - a)
        if closed:
            for (w,) in c.execute("select received_unix_ms from commitments where round=? and status='accepted'", (rid,)):
                hide.append(closed - w)
    for k, v in segs.items():
        if v: print(f"  {k}: median {statistics.median(v):.0f} ms, mean {statistics.mean(v):.0f} ms, n={len(v)}")
    if hide:
        hide.sort()
        q = lambda p: hide[min(len(hide) - 1, int(p * len(hide)))]
        print(f"  a worker's commitment->its round closed: median {q(0.5)} ms, p90 {q(0.9)} ms, max {hide[-1]} ms, n={len(hide)}")
