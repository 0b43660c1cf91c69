#!/usr/bin/env python3
"""What a deeper pipeline would give, estimated from a kept delay-1 run.

    bench/wan/pipeline-depth.py RUN ...

RUN is a directory `scripts/wan-bench.sh --keep` kept (its state/coordinator.sqlite
and worker*.json). Under `[outer] delay = d` a worker that committed round r
trains d more rounds before it needs round r's result (the base of round
r + d + 1), so it idles max(0, close(r) - its commitment to r - d x its
training time a round). Computed for d = 1 (checked against the utilisation
the workers measured) and d = 2, per worker over the run's rounds but its
last d. First order only: it keeps the run's close times, which a deeper
pipeline would shift (the workers' lag would grow by what they no longer idle).
"""
import glob, json, os, sqlite3, statistics, sys

for run in sys.argv[1:]:
    db = sqlite3.connect(os.path.join(run, "state", "coordinator.sqlite"))
    closed = dict(db.execute("select id, closed_unix_ms from rounds where closed_unix_ms is not null"))
    commits = {}
    for rnd, worker, at in db.execute("select round, worker, received_unix_ms from commitments where status='accepted'"):
        commits.setdefault(worker, {})[rnd] = at
    last = max(closed) if closed else 0
    print("==", run)
    rows = []
    for path in sorted(glob.glob(os.path.join(run, "worker*.json"))):
        summary = json.load(open(path))
        worker, trained = summary["worker"], summary["rounds_trained"]
        if not trained or worker not in commits:
            continue
        per_round = summary["training_seconds"] / trained * 1000
        estimates = []
        for depth in (1, 2):
            idle = [max(0, closed[r] - at - depth * per_round)
                    for r, at in commits[worker].items() if r in closed and r + depth < last]
            mean_idle = statistics.mean(idle) if idle else 0.0
            estimates.append(per_round / (per_round + mean_idle))
        rows.append((summary["compute_utilisation"], *estimates))
        print(f"  worker {worker}: training {per_round:.0f} ms/round, measured {100 * summary['compute_utilisation']:.1f}%,"
              f" estimated delay 1 {100 * estimates[0]:.1f}%, delay 2 {100 * estimates[1]:.1f}%")
    if rows:
        means = [100 * statistics.mean(col) for col in zip(*rows)]
        print(f"  mean: measured {means[0]:.1f}%, estimated delay 1 {means[1]:.1f}%, delay 2 {means[2]:.1f}%")
