"""``docs/benchmarks.md`` and ``docs/img/bench-*.png`` from the results of ``python -m benchmarks``.

:func:`write` takes the results dict (as stored in the JSON file) and writes
one Markdown table per section, each with a short reading computed from the
figures, and three plots with matplotlib.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.common import fmt, ratios

RUSH = "rush_dask"


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _rates(n: int, seconds: list[float]) -> list[float]:
    return [n / s for s in seconds]


def _cell(values: list[float], digits: int = 0) -> str:
    return fmt(values, digits) if values else "–"


# ------------------------------------------------------------------ sections
def machine_lines(r: dict) -> list[str]:
    m = r["machine"]
    versions = ", ".join(
        f"{name} {m[key]}"
        for name, key in (
            ("Python", "python"),
            ("Redis", "redis_server"),
            ("redis-py", "redis-py"),
            ("dask", "dask"),
            ("distributed", "distributed"),
            ("rq", "rq"),
            ("celery", "celery"),
            ("pandas", "pandas"),
        )
        if m.get(key)
    )
    noisy = (
        f" **{r['noisy_runs']} of {r['timed_runs']} timed runs started while other tests or "
        "benchmarks were running: their figures may be low.**"
        if r.get("noisy_runs")
        else ""
    )
    return [
        (
            f"Generated on {r['started']} by `{r['command'].strip()}` in {r['seconds'] / 60:.1f} min"
            f"{' (quick smoke run: small sizes, not representative)' if r['quick'] else ''}.{noisy}"
        ),
        "",
        (
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, {m['os']}. {versions}. "
            f"rush_dask at {m['rush_dask']}."
        ),
        "",
        (
            f"Every figure is the median of {r['repeats']} run(s) with [min – max]. Ratios pair the runs "
            "of one repetition (never across repetitions), then take the median. Every system has its "
            "workers (2 unless stated) running before the clock starts, on one private Redis server on "
            "a unix socket."
        ),
    ]


def rush_lines(s: dict) -> list[str]:
    systems, tasks = s["systems"], s["tasks"]
    head = "| workload | tasks | " + " | ".join(systems) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(systems)]
    for name, n in tasks.items():
        lines.append(
            f"| {name} tasks/s | {n:,} | " + " | ".join(_cell(_rates(n, s["runs"][x][name])) for x in systems) + " |"
        )
    for name, n in tasks.items():
        rush = _rates(n, s["runs"][RUSH][name])
        lines.append(
            f"| {name}: rush_dask / system | | "
            + " | ".join(_cell(ratios(rush, _rates(n, s["runs"][x][name])), 2) for x in systems)
            + " |"
        )
    for name, ideal in s["ideal"].items():
        n = tasks[name]
        lines.append(
            f"| {name}: system / ideal ({n / ideal:,.0f} tasks/s) | | "
            + " | ".join(_cell([ideal / t for t in s["runs"][x][name]], 3) for x in systems)
            + " |"
        )
    lines += ["", *[f"- {name}: {why}" for name, why in s["skipped"].items()]]
    # Reading, from the figures.
    trivial = {x: _med(_rates(tasks["trivial"], s["runs"][x]["trivial"])) for x in systems}
    order = sorted(systems, key=lambda x: -trivial[x])
    peers = [x for x in systems if not x.startswith(("rush", "bare"))]
    text = (
        f"On trivial tasks (the system's own overhead per task) the fastest is {order[0]} at "
        f"{trivial[order[0]]:,.0f} tasks/s; rush_dask runs {trivial[RUSH]:,.0f} tasks/s."
    )
    if peers:

        def trivial_rates(x: str) -> list[float]:
            return _rates(tasks["trivial"], s["runs"][x]["trivial"])

        text += (
            " Against the other task queues, rush_dask is "
            + ", ".join(f"{_med(ratios(trivial_rates(RUSH), trivial_rates(x))):.1f}× {x}" for x in peers)
            + "."
        )
    if "sleep" in s["ideal"]:
        eff = {x: _med([s["ideal"]["sleep"] / t for t in s["runs"][x]["sleep"]]) for x in systems}
        text += (
            f" With 10 ms tasks every system should be near the ideal; rush_dask reaches "
            f"{eff[RUSH]:.0%} of it, the lowest is {min(eff, key=eff.get)} at {min(eff.values()):.0%}."
        )
    return lines + ["", text]


def dask_lines(s: dict) -> list[str]:
    systems, wl = s["systems"], s["workloads"]
    lines = ["| workload | tasks | " + " | ".join(systems) + " |", "|---|---:|" + "---:|" * len(systems)]
    for name, w in wl.items():
        lines.append(
            f"| {name} tasks/s | {w['tasks']:,} | "
            + " | ".join(_cell(_rates(w["tasks"], s["runs"][x][name])) for x in systems)
            + " |"
        )
    others = [x for x in systems if x != RUSH]
    lines += [
        "",
        "| workload | " + " | ".join(f"rush_dask / {x}" for x in others) + " |",
        "|---|" + "---:|" * len(others),
    ]
    for name in wl:
        lines.append(
            f"| {name} | "
            + " | ".join(_cell(ratios(s["runs"][x][name], s["runs"][RUSH][name]), 2) for x in others)
            + " |"
        )
    for name, ideal in s["ideal"].items():
        lines.append(
            f"| {name}: rush_dask / ideal | {_cell([ideal / t for t in s['runs'][RUSH][name]], 3)} |"
            + " |" * (len(others) - 1)
        )
    lines += [
        "",
        "Workloads: "
        + "; ".join(f"**{n}** ({w['size']:,}): {w['description']}" for n, w in wl.items())
        + ". Tasks are the nodes of the optimized graph; times are `dask.compute` end to end, so "
        "they include Dask's own client-side work (graph building, optimization, culling), "
        "which every system pays.",
    ]
    cluster = "LocalCluster" if "LocalCluster" in systems else None
    graphs = [n for n in wl if n not in s["ideal"]]
    best = {n: max(systems, key=lambda x, n=n: _med(_rates(wl[n]["tasks"], s["runs"][x][n]))) for n in graphs}
    text = "Fastest system per graph: " + ", ".join(f"{n}: {best[n]}" for n in graphs) + "."
    if cluster:
        vs = [_med(ratios(s["runs"][cluster][n], s["runs"][RUSH][n])) for n in graphs]
        text += (
            f" rush_dask against the distributed LocalCluster: {min(vs):.1f}× to {max(vs):.1f}× its "
            "throughput on the same graphs."
        )
    if "sync" in systems:
        vs = [_med(ratios(s["runs"]["sync"][n], s["runs"][RUSH][n])) for n in graphs]
        text += (
            f" Against the single-threaded sync scheduler (no inter-process cost at all): "
            f"{min(vs):.2f}× to {max(vs):.2f}×; on graphs of tiny tasks the in-process schedulers "
            "win, and the distributed systems pay a round trip per task."
        )
    return lines + ["", text]


def scaling_lines(s: dict) -> list[str]:
    n, sleep = s["n_tasks"], s["sleep"]
    runs = {int(k): v for k, v in s["runs"].items()}
    lines = ["| workers | ideal (s) | time (s) | tasks/s | efficiency |", "|---:|---:|---:|---:|---:|"]
    eff = {}
    for k, seconds in sorted(runs.items()):
        ideal = n * sleep / k
        eff[k] = [ideal / t for t in seconds]
        lines.append(f"| {k} | {ideal:.2f} | {fmt(seconds, 3)} | {fmt(_rates(n, seconds))} | {fmt(eff[k], 3)} |")
    worst = min(eff, key=lambda k: _med(eff[k]))
    text = (
        f"{n:,} tasks of `time.sleep({sleep:g})` on each worker count; efficiency = ideal "
        f"`{n} × {sleep:g} / workers` over the measured time. It stays at or above "
        f"{_med(eff[worst]):.0%} up to {max(eff)} workers (lowest at {worst}). Sleeping tasks use no "
        "CPU, so more workers than cores still scale: the loss is rush_dask's per-task overhead "
        "and `time.sleep` overshoot, and it grows with the worker count as each run gets shorter."
    )
    return lines + ["", text]


def cost_lines(s: dict) -> list[str]:
    n, nodes = s["n_tasks"], s["n_nodes"]
    mib = s["peak_bytes"] / 2**20
    lines = [
        "| measure | value |",
        "|---|---:|",
        f"| push {n:,} tasks in one `push_tasks` call (s) | {fmt(s['push_seconds'], 3)} |",
        f"| push throughput (tasks/s) | {fmt(_rates(n, s['push_seconds']))} |",
        f"| Redis memory per queued task, `INFO memory` (bytes) | {fmt(s['queued_bytes'])} |",
        f"| `MEMORY USAGE` of a queued task's hash (bytes) | {fmt(s['queued_hash_bytes'])} |",
    ]
    if "finished_bytes" in s:
        lines += [
            f"| Redis memory per finished task, `INFO memory` (bytes; one run) | {s['finished_bytes']:,.0f} |",
            f"| `MEMORY USAGE` of a finished task's hash (bytes; one run) | {s['finished_hash_bytes']:,.0f} |",
            f"| archive list per finished task (bytes; one run) | {s['archive_bytes']:,.0f} |",
        ]
    lines += [
        f"| graph of {nodes:,} tasks: `GraphRun()` + `submit()` (s) | {fmt(s['submit_seconds'], 3)} |",
        f"| graph of {nodes:,} tasks: client peak memory during them (MiB, tracemalloc; one run) | {mib:,.1f} |",
        f"| the graph dict itself (MiB, tracemalloc; one run) | {s['graph_bytes'] / 2**20:,.1f} |",
    ]
    text = (
        f"A queued task costs about {_med(s['queued_bytes']):,.0f} bytes of Redis memory "
        f"({_med(s['queued_bytes']) * 1e6 / 2**30:,.2f} GiB per million)"
    )
    if "finished_bytes" in s:
        text += f", a finished one about {s['finished_bytes']:,.0f} bytes (its hash plus its archive row)"
    text += (
        f". Submitting a {nodes:,}-task Dask graph takes {_med(s['submit_seconds']):.2f} s and "
        f"{mib:,.0f} MiB of client memory at its peak, "
        f"{s['peak_bytes'] / max(s['graph_bytes'], 1):.1f}× the graph dict itself."
    )
    return lines + ["", text]


def archive_lines(s: dict) -> list[str]:
    n = s["n_tasks"]
    lines = [
        "| measure | value | target |",
        "|---|---:|---:|",
        f"| push {n:,} tasks (one call; one run) | {s['push']:.3f} s | |",
        f"| full `fetch_finished_tasks()` into pandas, cold cache (s) | {fmt(s['full'], 3)} | ≤ 1 s |",
        f"| then one new task: `fetch_finished_tasks()`, the whole table (ms) "
        f"| {fmt([t * 1e3 for t in s['incremental']], 3)} | ≤ 2 ms |",
        f"| then one new task: `fetch_new_tasks()`, the new rows alone (ms) "
        f"| {fmt([t * 1e3 for t in s.get('new_only', [float('nan')])], 3)} | ≤ 2 ms |",
        f"| `to_dask_dataframe().compute(scheduler='sync')` (s) | {fmt(s['lazy'], 3)} | |",
    ]
    full, inc = _med(s["full"]), _med(s["incremental"]) * 1e3
    new = _med(s.get("new_only", [float("nan")])) * 1e3
    text = (
        f"A full fetch of {n:,} finished tasks takes {full:.2f} s ({n / full:,.0f} rows/s, target "
        f"{'met' if full <= 1 else '**missed**'}). After it, Redis is asked only for what is new: "
        f"`fetch_finished_tasks()` returns the whole table with one new task in {inc:.2f} ms "
        f"(target {'met' if inc <= 2 else '**missed**'}; most of it is copying the cached "
        f"table's number columns into the new DataFrame), `fetch_new_tasks()` the new task "
        f"alone in {new:.2f} ms (target {'met' if new <= 2 else '**missed**'})."
    )
    return lines + ["", text]


def cli_lines(s: dict) -> list[str]:
    lines = ["| command | start to exit (s) | dask, pandas or numpy imported |", "|---|---:|---|"]
    for name, r in s.items():
        lines.append(f"| `rush-dask {name}` | {fmt(r['seconds'], 3)} | {r['imports']} |")
    status = _med(s["status"]["seconds"]) if "status" in s else float("nan")
    text = (
        f"`rush-dask status` starts, reads the network and prints in {status:.2f} s (median; target "
        f"≤ 0.5 s: {'met' if status <= 0.5 else '**missed**'})."
    )
    return lines + ["", text]


# --------------------------------------------------------------------- plots
def _bars(path: Path, title: str, groups: list[str], systems: list[str], values: dict, ylabel: str) -> None:
    """Grouped bars: ``values[system][group]`` = list of runs; median bar, min–max whisker; log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(groups) + 3), 4.2))
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        xs, meds, lo, hi = [], [], [], []
        for j, g in enumerate(groups):
            runs = values.get(system, {}).get(g)
            if not runs:
                continue
            med = _med(runs)
            xs.append(j + (i - (len(systems) - 1) / 2) * width)
            meds.append(med)
            lo.append(med - min(runs))
            hi.append(max(runs) - med)
        ax.bar(xs, meds, width, yerr=[lo, hi], capsize=2, label=system)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(path: Path, s: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, sleep = s["n_tasks"], s["sleep"]
    runs = sorted((int(k), v) for k, v in s["runs"].items())
    ks = [k for k, _ in runs]
    eff = [[n * sleep / k / t for t in v] for k, v in runs]
    meds = [_med(e) for e in eff]
    fig, ax = plt.subplots(figsize=(6, 4))
    below = [m - min(e) for m, e in zip(meds, eff)]
    above = [max(e) - m for m, e in zip(meds, eff)]
    ax.errorbar(ks, meds, yerr=[below, above], marker="o", capsize=3, label="rush_dask")
    ax.axhline(1.0, color="grey", linestyle="--", label="ideal")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("workers")
    ax.set_ylabel("efficiency (ideal time / measured time)")
    ax.set_title(f"Scaling: {n:,} tasks of time.sleep({sleep:g})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plots(r: dict, img: Path) -> list[Path]:
    img.mkdir(parents=True, exist_ok=True)
    written = []
    if "rush" in r:
        s = r["rush"]
        rates = {x: {w: _rates(n, s["runs"][x][w]) for w, n in s["tasks"].items()} for x in s["systems"]}
        path = img / "bench-rush.png"
        _bars(path, "rush API: throughput per system (2 workers)", list(s["tasks"]), s["systems"], rates, "tasks/s")
        written.append(path)
    if "dask" in r:
        s = r["dask"]
        rates = {x: {w: _rates(v["tasks"], s["runs"][x][w]) for w, v in s["workloads"].items()} for x in s["systems"]}
        path = img / "bench-dask.png"
        _bars(
            path,
            "Dask graphs: throughput per scheduler (2 workers)",
            list(s["workloads"]),
            s["systems"],
            rates,
            "tasks/s (dask.compute end to end)",
        )
        written.append(path)
    if "scaling" in r:
        path = img / "bench-scaling.png"
        plot_scaling(path, r["scaling"])
        written.append(path)
    return written


def _data_lines(s: dict) -> list[str]:
    from benchmarks.bench_data import data_lines

    return data_lines(s)


def _futures_lines(s: dict) -> list[str]:
    from benchmarks.bench_futures import futures_lines

    return futures_lines(s)


# -------------------------------------------------------------------- report
def _hpo_lines(s: dict) -> list[str]:
    from benchmarks.bench_hpo import hpo_lines as lines  # optuna, sklearn: only when this section ran

    return lines(s)


SECTION_TITLES = {
    "rush": (
        "The rush API against other task queues",
        rush_lines,
        "bench-rush.png",
        (
            "Tasks pushed in one call and waited for, on 2 workers: rush_dask (`push_tasks` + "
            "`wait_for_tasks`), a bare Redis list queue written for the benchmark (LPUSH/BRPOP, one "
            "task per round trip, and batches of 32), RQ (`SimpleWorker` processes, `enqueue_many`), "
            "Celery (`--pool=solo` workers, Redis broker and result backend, a `group`) and "
            "dask.distributed (`client.map` on a LocalCluster of 2 single-threaded processes). "
            "Timed from the first push until the client knows every task is done."
        ),
    ),
    "dask": (
        "Dask graphs on rush_dask and on Dask's schedulers",
        dask_lines,
        "bench-dask.png",
        (
            "`dask.compute(..., scheduler=...)` on rush_dask (2 workers), Dask's `sync`, `threads` "
            "(2), `processes` (a pool of 2 started beforehand) and a distributed LocalCluster "
            "(2 worker processes, 1 thread each). The first table is throughput; the second is "
            "rush_dask's throughput over each other system's (above 1: rush_dask is faster)."
        ),
    ),
    "scaling": (
        "Scaling with the number of workers",
        scaling_lines,
        "bench-scaling.png",
        "rush_dask, the same tasks on 1 to 16 workers.",
    ),
    "cost": (
        "Cost: memory and time per task",
        cost_lines,
        None,
        (
            "Redis memory read with `INFO memory` (whole server, before and after) and `MEMORY USAGE` "
            "(one key); client memory with `tracemalloc` (Python allocations)."
        ),
    ),
    "data": (
        "Data-heavy graphs: megabyte chunks",
        _data_lines,
        None,
        (
            "`dask.compute` of graphs whose chunks are megabytes, on rush_dask (2 workers; large "
            "results stay on their host, see the data plane in `docs/data-plane.md`), the threads "
            "scheduler (2 threads, no copies at all) and a distributed LocalCluster (2 worker "
            "processes, 1 thread each). Redis traffic is the server's network bytes in and out "
            "during the run."
        ),
    ),
    "archive": (
        "The archive: fetching finished tasks",
        archive_lines,
        None,
        (
            "Finished tasks read into pandas with `fetch_finished_tasks()`: a cold cache first, "
            "then an incremental fetch after one more task finishes."
        ),
    ),
    "futures": (
        "Futures against dask.distributed",
        _futures_lines,
        None,
        (
            "`rush.map` + `as_completed(..., with_results=True)` and `rush.get_executor().map` against "
            "the same calls on a distributed LocalCluster (2 worker processes, 1 thread each), on "
            "trivial functions: the cost of the futures machinery itself."
        ),
    ),
    "cli": (
        "The command line: start-up time",
        cli_lines,
        None,
        (
            "Each command in a fresh process against a network of 2 workers, at least 5 runs; "
            "`stop` names a worker that already stopped, so it reads and prints but stops nothing."
        ),
    ),
    "hpo": (
        "Hyperparameter search",
        _hpo_lines,
        None,
        (
            "`rush_dask.optuna.optimize` against Optuna's multiprocessing recipe (one process per worker, "
            "`study.optimize` on the same `JournalRedisBackend` study), RandomSampler on both sides; "
            "utilization from the objective's own busy intervals; trials/s from the trials' timestamps. "
            'GridSearchCV (SVC on digits, 48 fits) through joblib\'s `"rush"` backend on 2 workers '
            'against distributed\'s `"dask"` backend on a LocalCluster of 2 single-threaded processes '
            "(speed = dask's seconds / rush's). See `benchmarks/bench_hpo.py`."
        ),
    ),
}


def write(r: dict, out: Path) -> Path:
    """Write ``out/benchmarks.md`` and ``out/img/bench-*.png``; returns the Markdown path.

    >>> results = json.loads(Path("benchmarks/results/benchmarks-....json").read_text())  # doctest: +SKIP
    >>> write(results, Path("docs"))  # doctest: +SKIP
    """
    out.mkdir(parents=True, exist_ok=True)
    plots(r, out / "img")
    lines = ["# Benchmarks", "", *machine_lines(r), ""]
    for section in r["sections"]:
        title, table, image, intro = SECTION_TITLES[section]
        lines += [f"## {title}", "", intro, "", *table(r[section]), ""]
        if image:
            lines += [f"![{title}](img/{image})", ""]
    lines += [
        (
            "Regenerate with `python -m benchmarks` (see `benchmarks/README.md`); the raw figures go "
            "to `benchmarks/results/` (not tracked)."
        ),
        "",
    ]
    path = out / "benchmarks.md"
    path.write_text("\n".join(lines))
    return path
