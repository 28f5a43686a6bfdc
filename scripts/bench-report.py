#!/usr/bin/env python3
"""make bench's report: reads the VM console logs of tests/vm/plan-bench (or any plan
whose tests print `bench NAME REP NS_PER_OP OPS` lines, e.g. the tiny run in make
check) and writes, per mode, the median ns/op on the in-tree modules (first and
second run), on ours, and the ratio ours / in-tree (the mean of the two in-tree
medians), as a Markdown table (stdout and bench.md), bench.csv, bench.json and a bar
chart of the ratios, bench.png.

    bench-report.py --out DIR MODE=LOG [MODE=LOG ...]

A test's lines belong to `ours` when its plan name contains "ours", to in-tree when
it contains "intree"; an in-tree test's trailing -N numbers its pass (default 1).
"""
import argparse
import csv
import json
import os
import re
import statistics
import sys

BEGIN = re.compile(r"KVMRS-BEGIN (\d+) (\S+)")
BENCH = re.compile(r"^bench (\S+) (\d+) ([0-9.]+) (\d+)\s*$")
STAT = re.compile(r"^bench-stat (\S+) (\S+) (\d+)\s*$")


def parse(path):
    """{name: {side: [ns, ...]}} and {name: {side: {stat: [delta, ...]}}}, where side
    is 'ours', 'intree-1', 'intree-2', ..."""
    runs, stats = {}, {}
    side = None
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\r\n")
            m = BEGIN.search(line)
            if m:
                test = m.group(2)
                kind = "ours" if "ours" in test else "intree" if "intree" in test else None
                if kind == "intree":
                    # intree-2 and boot-intree-2 are the second in-tree pass.
                    m2 = re.search(r"-(\d+)$", test)
                    side = f"intree-{m2.group(1)}" if m2 else "intree-1"
                else:
                    side = kind
                continue
            if side is None:
                continue
            m = BENCH.match(line)
            if m:
                runs.setdefault(m.group(1), {}).setdefault(side, []).append(float(m.group(3)))
                continue
            m = STAT.match(line)
            if m:
                d = stats.setdefault(m.group(1), {}).setdefault(side, {})
                d.setdefault(m.group(2), []).append(int(m.group(3)))
    return runs, stats


def median(v):
    return statistics.median(v) if v else None


def rows_for(mode, runs, stats):
    rows = []
    for name, sides in runs.items():
        i1, i2, ours = (median(sides.get(k, [])) for k in ("intree-1", "intree-2", "ours"))
        base = [x for x in (i1, i2) if x is not None]
        ref = sum(base) / len(base) if base else None
        row = {
            "mode": mode,
            "benchmark": name,
            "reps": len(sides.get("ours", [])),
            "intree_1_ns": i1,
            "ours_ns": ours,
            "intree_2_ns": i2,
            "ratio": ours / ref if ours is not None and ref else None,
            "drift": i2 / i1 if i1 and i2 else None,
        }
        for side in ("intree-1", "ours"):
            for stat, v in stats.get(name, {}).get(side, {}).items():
                row[f"{side.replace('-', '_')}_{stat}"] = median(v)
        rows.append(row)
    return rows


def fmt_ns(v):
    if v is None:
        return "-"
    if v >= 1e8:
        return f"{v / 1e9:.2f} s"
    return f"{v:,.0f}"


def fmt_x(v):
    return "-" if v is None else f"{v:.2f}"


def table(rows):
    out = ["| mode | benchmark | in-tree (ns/op) | ours (ns/op) | in-tree again | ours/in-tree | drift |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['mode']} | {r['benchmark']} | {fmt_ns(r['intree_1_ns'])} | "
                   f"{fmt_ns(r['ours_ns'])} | {fmt_ns(r['intree_2_ns'])} | "
                   f"{fmt_x(r['ratio'])} | {fmt_x(r['drift'])} |")
    return "\n".join(out)


def chart(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    names = list(dict.fromkeys(r["benchmark"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.8), 5))
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        by = {r["benchmark"]: r["ratio"] for r in rows if r["mode"] == mode}
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, [by.get(n) or 0 for n in names], width, label=mode)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=40, ha="right")
    ax.set_ylabel("ours / in-tree (time per op; lower is faster)")
    ax.set_title("kvm-rs vs in-tree KVM, same TCG boot (medians)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("logs", nargs="+", help="MODE=LOG")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for spec in a.logs:
        mode, path = spec.split("=", 1)
        runs, stats = parse(path)
        rows += rows_for(mode, runs, stats)
    if not rows:
        print("bench-report: no bench lines in " + ", ".join(a.logs), file=sys.stderr)
        return 1
    md = table(rows)
    print(md)
    with open(os.path.join(a.out, "bench.md"), "w") as f:
        f.write(md + "\n")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(a.out, "bench.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(a.out, "bench.json"), "w") as f:
        json.dump(rows, f, indent=1)
    chart(rows, os.path.join(a.out, "bench.png"))
    print(f"bench-report: {len(rows)} rows in {a.out}/bench.{{md,csv,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
