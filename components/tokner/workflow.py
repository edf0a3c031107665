"""Run a workflow of ``project.yml`` and print how long each step took.

``python -m tokner.workflow all [--jobs N] [--vars-file FILE.yml] [--vars.NAME VALUE ...]``

* ``--jobs 1`` (default): every command of the workflow in its order, through
  ``spacy project run`` (unchanged steps are skipped as usual, from their deps/outputs).
* ``--jobs N``: up to N steps at once. A step waits for the earlier steps whose outputs
  it depends on (a dep equal to, or inside, an earlier step's output; and every earlier
  step without deps, a set-up step such as ``models``); among the steps
  that are ready, the one listed first in the workflow starts first, so the workflow's
  order is its priority. Each step gets ``OMP_NUM_THREADS`` = cores // N (unless set)
  and writes its output to ``<metrics>/logs/<step>.log``. The skip test and the lock
  file are weasel's own (``check_rerun``, ``update_lockfile``), the lock file written
  by one step at a time, so ``spacy project run STEP`` afterwards skips the same steps.

``--plan SECONDS.json`` runs nothing: it prints the schedule ``--jobs N`` would follow if
each step took the seconds given (a ``timings-NAME.json`` of an earlier run, or a
``{"step": seconds}`` mapping), to choose a workflow's order without hours of training.

Either way the runner stops starting steps at the first failure (steps already running
finish), prints a timing table and writes it to ``<metrics>/timings-<workflow>.json``.
``--vars-file`` reads overrides of project.yml's ``vars`` from a YAML mapping (e.g.
``configs/paper.vars.yml``); ``--vars.NAME VALUE`` given after it win.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import srsly


def _metrics_dir(config: Dict[str, Any], extra: List[str]) -> str:
    metrics = config.get("vars", {}).get("metrics", "metrics")
    for i, arg in enumerate(extra[:-1]):
        if arg == "--vars.metrics":
            metrics = extra[i + 1]
    return str(metrics)


def _write_timings(project_dir: Path, name: str, metrics: str, timings: List[Dict[str, Any]],
                   wall: float, jobs: int) -> None:
    total = sum(t["seconds"] for t in timings)
    print(f"\n{'step':<24}{'seconds':>10}")
    for t in timings:
        print(f"{t['step']:<24}{t['seconds']:>10.1f}{'' if t['returncode'] == 0 else '  FAILED'}")
    print(f"{'total':<24}{total:>10.1f}")
    if jobs > 1:
        print(f"{'wall (' + str(jobs) + ' jobs)':<24}{wall:>10.1f}")
    out = project_dir / metrics / f"timings-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"workflow": name, "jobs": jobs, "steps": timings, "total_seconds": round(total, 1),
            "wall_seconds": round(wall, 1)}
    out.write_text(json.dumps(data, indent=2) + "\n")


def run_workflow(name: str, extra: List[str], project_dir: Path = Path("."), jobs: int = 1) -> int:
    config = srsly.read_yaml(project_dir / "project.yml")
    workflows = config.get("workflows", {})
    if name not in workflows:
        raise SystemExit(f"workflow {name!r} not in project.yml (have: {', '.join(workflows)})")
    if jobs > 1:
        return _run_parallel(name, extra, project_dir, jobs)
    timings = []
    rc = 0
    t_start = time.perf_counter()
    for step in workflows[name]:
        cmd = [sys.executable, "-m", "spacy", "project", "run", step, str(project_dir), *extra]
        print(f"\n=== {step} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        secs = time.perf_counter() - t0
        timings.append({"step": step, "seconds": round(secs, 1), "returncode": rc,
                        "start": round(t0 - t_start, 3), "end": round(t0 + secs - t_start, 3)})
        print(f"=== {step}: {secs:.1f} s (exit {rc}) ===", flush=True)
        if rc != 0:
            break
    _write_timings(project_dir, name, _metrics_dir(config, extra), timings, time.perf_counter() - t_start, 1)
    return rc


def _inside(path: str, folder: str) -> bool:
    p, f = Path(os.path.normpath(path)), Path(os.path.normpath(folder))
    return p == f or f in p.parents


def step_predecessors(steps: List[str], commands: Dict[str, Dict[str, Any]]) -> Dict[str, List[str]]:
    """For each step, the earlier steps it must wait for: those with an output that one of
    its deps equals or lies inside (or that lies inside one of its deps, a folder), and every
    earlier step without deps: a set-up step (``models``: materialising a model that later
    steps load by a var that may also name a hub id or an API model, so not as a dep)."""
    before: Dict[str, List[str]] = {}
    for i, step in enumerate(steps):
        deps = commands[step].get("deps", [])
        before[step] = [
            prev for prev in steps[:i]
            if not commands[prev].get("deps")
            or any(_inside(d, o) or _inside(o, d)
                   for d in deps for o in commands[prev].get("outputs", []) + commands[prev].get("outputs_no_cache", []))
        ]
    return before


_PRINT = threading.Lock()


def _say(msg: str, flush: bool = True) -> None:
    """One line to stdout, whole (the steps' threads print side by side)."""
    with _PRINT:
        sys.stdout.write(msg + "\n")
        if flush:
            sys.stdout.flush()


def _ready(steps: List[str], before: Dict[str, List[str]], state: Dict[str, str]) -> List[str]:
    """The waiting steps whose predecessors are all done, in workflow order (its priority)."""
    return [s for s in steps if state[s] == "waiting" and all(state[p] == "done" for p in before[s])]


def plan_schedule(steps: List[str], before: Dict[str, List[str]], seconds: Dict[str, float],
                  jobs: int) -> List[Dict[str, Any]]:
    """Replay step durations through the runner's rule (``_ready``: up to ``jobs`` at once,
    the first ready step in workflow order first) without running anything: the start and
    end second of each step, and the worker slot it runs in. How the order of a workflow is
    chosen: time its steps once, then try orders here instead of in hours of training."""
    state = {s: "waiting" for s in steps}
    running: Dict[str, float] = {}
    slots: Dict[str, int] = {}
    free = list(range(jobs))
    now, plan = 0.0, []
    while True:
        for step in _ready(steps, before, state)[: jobs - len(running)]:
            state[step] = "running"
            running[step] = now + float(seconds[step])
            slots[step] = free.pop(0)
            plan.append({"step": step, "slot": slots[step], "start": now, "end": running[step]})
        if not running:
            return plan
        now = min(running.values())
        for step in [s for s, end in running.items() if end == now]:
            state[step] = "done"
            del running[step]
            free = sorted(free + [slots[step]])


def read_step_seconds(path: str) -> Dict[str, float]:
    """Step durations from a runner's ``timings-NAME.json`` (its ``steps``) or a plain
    ``{"step": seconds}`` JSON mapping."""
    data = srsly.read_json(path)
    if isinstance(data, dict) and isinstance(data.get("steps"), list):
        return {t["step"]: float(t["seconds"]) for t in data["steps"]}
    if isinstance(data, dict) and all(isinstance(v, (int, float)) for v in data.values()):
        return {str(k): float(v) for k, v in data.items()}
    raise SystemExit(f"{path}: expected a timings-NAME.json or a {{\"step\": seconds}} mapping")


def print_plan(name: str, extra: List[str], seconds_file: str, project_dir: Path = Path("."),
               jobs: int = 1) -> List[Dict[str, Any]]:
    """``--plan FILE``: the schedule ``--jobs`` would follow with the durations in FILE."""
    steps, commands = _workflow_steps(name, extra, project_dir)
    seconds = read_step_seconds(seconds_file)
    missing = [s for s in steps if s not in seconds]
    if missing:
        raise SystemExit(f"{seconds_file}: no seconds for steps {missing} of workflow {name!r}")
    plan = plan_schedule(steps, step_predecessors(steps, commands), seconds, jobs)
    _say(f"{'step':<24}{'slot':>5}{'start min':>11}{'end min':>9}")
    for p in plan:
        _say(f"{p['step']:<24}{p['slot']:>5}{p['start'] / 60:>11.1f}{p['end'] / 60:>9.1f}")
    _say(f"{'wall (' + str(jobs) + ' jobs)':<24}{'':>5}{'':>11}{max(p['end'] for p in plan) / 60:>9.1f}")
    return plan


def _schedule(steps, before, state, cond, jobs, worker, threads, t_start) -> None:
    """Start each ready step (all its predecessors done) while fewer than ``jobs`` run, in
    workflow order; return when nothing runs and nothing more can start."""
    with cond:
        while True:
            failed = any(v == "failed" for v in state.values())
            running = sum(v == "running" for v in state.values())
            ready = [] if failed else _ready(steps, before, state)
            if not running and not ready:
                break
            for step in ready[: jobs - running]:
                state[step] = "running"
                _say(f"=== {step} (started at {time.perf_counter() - t_start:.0f} s) ===", flush=True)
                t = threading.Thread(target=worker, args=(step,), daemon=True)
                threads.append(t)
                t.start()
            cond.wait()


def _workflow_steps(name: str, extra: List[str], project_dir: Path) -> Tuple[List[str], Dict[str, Dict[str, Any]]]:
    """The workflow's steps and project.yml's commands, vars overridden by ``extra``."""
    from weasel.util.config import parse_config_overrides
    from weasel.util import load_project_config

    overrides = parse_config_overrides(list(extra))  # it empties the list it is given
    config = load_project_config(project_dir, overrides=overrides)
    if name not in config.get("workflows", {}):
        raise SystemExit(f"workflow {name!r} not in project.yml (have: {', '.join(config.get('workflows', {}))})")
    commands = {c["name"]: c for c in config.get("commands", [])}
    steps = list(config["workflows"][name])
    unknown = [s for s in steps if s not in commands]
    if unknown:
        raise SystemExit(f"workflow {name!r} names steps that are not commands: {unknown}")
    return steps, commands


def _run_parallel(name: str, extra: List[str], project_dir: Path, jobs: int) -> int:
    from weasel.cli.run import check_rerun, update_lockfile
    from weasel.util import split_command

    project_dir = project_dir.resolve()
    raw = srsly.read_yaml(project_dir / "project.yml")
    steps, commands = _workflow_steps(name, extra, project_dir)
    before = step_predecessors(steps, commands)
    metrics = _metrics_dir(raw, extra)
    logs = project_dir / metrics / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    lock = threading.Lock()  # the lock file: one reader/writer at a time
    state: Dict[str, str] = {s: "waiting" for s in steps}  # waiting/running/done/failed
    results: Dict[str, Dict[str, Any]] = {}
    cond = threading.Condition()
    procs: Dict[str, subprocess.Popen] = {}  # the running steps' processes, stopped on Ctrl-C
    interrupted = threading.Event()
    t_start = time.perf_counter()

    def run_step(step: str) -> Tuple[int, bool]:
        cmd = commands[step]
        missing = [d for d in cmd.get("deps", []) if not (project_dir / d).exists()]
        if missing:
            _say(f"✘ Missing dependency specified by command '{step}': {missing[0]}", flush=True)
            return 1, False
        with lock:
            rerun = check_rerun(project_dir, cmd)
        if not rerun:
            _say(f"ℹ Skipping '{step}': nothing changed", flush=True)
            return 0, True
        with open(logs / f"{step}.log", "w", encoding="utf-8") as log:
            for line in cmd["script"]:
                argv = split_command(line)
                if argv and argv[0] in ("python", "python3"):  # as weasel does: this interpreter
                    argv[0] = sys.executable
                log.write(f"Running command: {line}\n")
                log.flush()
                with cond:  # checked under the lock the interrupt handler takes: no start after it
                    if interrupted.is_set():
                        return 130, False
                    procs[step] = subprocess.Popen(argv, cwd=project_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
                rc = procs[step].wait()
                with cond:
                    procs.pop(step, None)
                if rc != 0:
                    return rc, False
        with lock:
            update_lockfile(project_dir, cmd)
        return 0, False

    def worker(step: str) -> None:
        t0 = time.perf_counter()
        try:
            rc, skipped = run_step(step)
        except Exception as err:  # a bug here must not leave the scheduler waiting forever
            _say(f"✘ {step}: {type(err).__name__}: {err}", flush=True)
            rc, skipped = 1, False
        secs = time.perf_counter() - t0
        with cond:
            results[step] = {"step": step, "seconds": round(secs, 1), "returncode": rc, "skipped": skipped,
                             "start": round(t0 - t_start, 3), "end": round(t0 + secs - t_start, 3)}
            state[step] = "done" if rc == 0 else "failed"
            cond.notify_all()
        if not skipped:
            tail = "" if rc == 0 else f"; see {logs / (step + '.log')}"
            _say(f"=== {step}: {secs:.1f} s (exit {rc}{tail}) ===", flush=True)

    threads = []
    try:
        _schedule(steps, before, state, cond, jobs, worker, threads, t_start)
    except KeyboardInterrupt:
        # Ctrl-C (or SIGINT): stop the running steps; what finished stays in project.lock,
        # so the next run skips it. A step stopped half-way is not recorded and reruns.
        with cond:
            interrupted.set()
            stopping = dict(procs)
        for proc in stopping.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in stopping.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for t in threads:
            t.join(timeout=30)
        _say(f"interrupted: stopped {', '.join(stopping) or 'no running step'}; the finished steps are "
             f"recorded in project.lock and a rerun skips them", flush=True)
        timings = [results[s] for s in steps if s in results]
        _write_timings(project_dir, name, metrics, timings, time.perf_counter() - t_start, jobs)
        return 130
    for t in threads:
        t.join()
    timings = [results[s] for s in steps if s in results]
    not_run = [s for s in steps if s not in results]
    if not_run:
        _say(f"not run: {', '.join(not_run)}", flush=True)
    _write_timings(project_dir, name, metrics, timings, time.perf_counter() - t_start, jobs)
    return next((t["returncode"] for t in timings if t["returncode"] != 0), 0)


def expand_vars_file(args: List[str], project_dir: Path = Path(".")) -> List[str]:
    """Replace ``--vars-file FILE`` by ``--vars.NAME VALUE`` pairs, checking every name
    exists in project.yml's vars (a typo must not be ignored silently)."""
    out: List[str] = []
    i = 0
    known = set(srsly.read_yaml(project_dir / "project.yml").get("vars", {}))
    while i < len(args):
        if args[i] == "--vars-file":
            if i + 1 >= len(args):
                raise SystemExit("--vars-file needs a path")
            data = srsly.read_yaml(args[i + 1]) or {}
            unknown = sorted(set(data) - known)
            if unknown:
                raise SystemExit(f"{args[i + 1]}: unknown project vars {unknown}")
            for k, v in data.items():
                out += [f"--vars.{k}", str(v)]
            i += 2
        else:
            out.append(args[i])
            i += 1
    return out


def split_jobs(args: List[str]) -> Tuple[int, List[str]]:
    """Take ``--jobs N`` (or ``--jobs=N``) out of ``args``."""
    jobs, rest, i = 1, [], 0
    while i < len(args):
        a = args[i]
        if a == "--jobs" or a.startswith("--jobs="):
            value = a.partition("=")[2] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
            if not value.isdigit() or int(value) < 1:
                raise SystemExit(f"--jobs needs a positive integer, got {value!r}")
            jobs = int(value)
            i += 1 if "=" in a else 2
        else:
            rest.append(a)
            i += 1
    return jobs, rest


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        _say(__doc__)
        return 2
    jobs, rest = split_jobs(argv[1:])
    if "--plan" in rest:
        i = rest.index("--plan")
        if i + 1 >= len(rest):
            raise SystemExit("--plan needs a JSON file of step seconds")
        print_plan(argv[0], expand_vars_file(rest[:i] + rest[i + 2:]), rest[i + 1], jobs=jobs)
        return 0
    return run_workflow(argv[0], expand_vars_file(rest), jobs=jobs)


if __name__ == "__main__":
    raise SystemExit(main())
