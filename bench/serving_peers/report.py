"""The table: one row per server front end, per concurrency req/s, p50 ms, p99 ms and server
CPU ms per request; then Waldo's best front end against every peer, and the load average."""

from __future__ import annotations

from . import PEERS, ROWS

WALDO_FRONTS = [f.row for p in PEERS if p.name == "waldo" for f in p.fronts]


def report(results: dict[str, dict[int, dict]], labels: dict[str, str], skipped: dict[str, str],
           args, load_before: tuple, load_after: tuple) -> None:
    levels = args.concurrency
    print()
    if args.repeats > 1:
        print(f"# best of {args.repeats} rounds per row and concurrency (highest req/s)")
    cell = f"{'req/s':>7s} {'p50':>6s} {'p99':>7s} {'cpu':>5s}"
    head = f"{'row':17s} {'load gen':13s}" + "".join(f" | {'conc ' + str(n):^28s}" for n in levels)
    print(head)
    print(f"{'':17s} {'':13s}" + f" | {cell}" * len(levels))
    print("-" * len(head))
    for row in args.rows:
        _, front = ROWS[row]
        gen = front.load if front.load == "aiohttp" else f"pa {front.protocol.split('-')[1]}"
        if row not in results:
            print(f"{row:17s} {gen:13s} | not run: {skipped.get(row, 'no result')}")
            continue
        cells = []
        for n in levels:
            r = results[row].get(n)
            cells.append(f"{r['rps']:7.1f} {r['p50']:6.1f} {r['p99']:7.1f} {r['cpu_ms']:5.2f}"
                         if r else f"{'-':>28s}")
        print(f"{row:17s} {gen:13s}" + "".join(f" | {c}" for c in cells))
        for n in levels:
            r = results[row].get(n)
            if r and r["errors"]:
                print(f"    conc {n}: {r['errors']} errors, first: {r['first_error']}")
    print("# req/s; p50, p99: latency ms; cpu: server CPU ms per request (all its processes); "
          "load gen: aiohttp, or perf_analyzer (pa) over HTTP/gRPC")
    print(f"# load average (1, 5, 15 min): before {_load(load_before)}, after {_load(load_after)}")
    if len(set(labels.values())) > 1:
        print(f"# WARNING: the servers disagree on the top label: {labels}")
    elif labels:
        print(f"# every server answered top label {next(iter(labels.values()))!r}")
    ratios(results, args)


def ratios(results: dict[str, dict[int, dict]], args) -> None:
    peers = [row for row in args.rows if row in results and not row.startswith("waldo")]
    waldo = [row for row in WALDO_FRONTS if row in results]
    if not waldo or not peers:
        return
    print()
    print("Waldo's best front end (highest req/s at that concurrency) against each peer: "
          "throughput ratio (above 1: Waldo serves more), p99 ratio (below 1: Waldo is faster)")
    verdicts = []
    for n in args.concurrency:
        cands = [(results[w][n], w) for w in waldo if n in results[w] and not results[w][n]["errors"]]
        if not cands:
            continue
        best, name = max(cands, key=lambda c: c[0]["rps"])
        parts, fails = [], []
        for row in peers:
            x = results[row].get(n)
            if not x or not x["rps"] > 0:
                continue
            parts.append(f"{row} {best['rps'] / x['rps']:.2f}x/{best['p99'] / x['p99']:.2f}x")
            if not best["rps"] > x["rps"]:
                fails.append(f"throughput vs {row}")
            if not best["p99"] < x["p99"]:
                fails.append(f"p99 vs {row}")
        print(f"  conc {n:3d} ({name}, {best['rps']:.0f} req/s, p99 {best['p99']:.1f} ms): "
              + "; ".join(parts))
        if n >= 8:
            verdicts.append(not fails)
            print(f"           target {'holds' if not fails else 'FAILS: ' + ', '.join(fails)}")
    if verdicts:
        print(f"target (conc >= 8: higher throughput and lower p99 than every peer that ran): "
              f"{'HOLDS' if all(verdicts) else 'DOES NOT HOLD'}; peers not run do not count")


def _load(load: tuple) -> str:
    return " ".join(f"{v:.2f}" for v in load)
