"""``python -m tokner.workflow NAME --jobs N`` on a toy project: order, overlap, skips, failures."""
import subprocess
import sys
import textwrap

import srsly

PROJECT = textwrap.dedent(
    """
    title: toy
    vars:
      out: "out"
      fail: "0"
    directories: ["out"]
    commands:
      - name: setup
        script:
          - "python -c \\"import pathlib; pathlib.Path('${vars.out}/a').write_text('a')\\""
        outputs:
          - "${vars.out}/a"
      - name: slow1
        script:
          - "python -c \\"import time, pathlib; time.sleep(1.5); pathlib.Path('${vars.out}/b').write_text('b')\\""
        deps:
          - "${vars.out}/a"
        outputs:
          - "${vars.out}/b"
      - name: slow2
        script:
          - "python -c \\"import os, sys, time, pathlib; time.sleep(1.5); print('threads', os.environ['OMP_NUM_THREADS']); pathlib.Path('${vars.out}/c').write_text('c'); sys.exit(int('${vars.fail}'))\\""
        deps:
          - "${vars.out}/a"
        outputs:
          - "${vars.out}/c"
      - name: join
        script:
          - "python -c \\"import pathlib; pathlib.Path('${vars.out}/d').write_text('d')\\""
        deps:
          - "${vars.out}/b"
          - "${vars.out}/c"
        outputs:
          - "${vars.out}/d"
    workflows:
      all:
        - setup
        - slow1
        - slow2
        - join
    """
)


def _run(proj, *args):
    return subprocess.run([sys.executable, "-m", "tokner.workflow", "all", *args], cwd=proj, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "3"})


def test_two_jobs_overlap_wait_for_deps_and_skip_on_rerun(tmp_path):
    (tmp_path / "project.yml").write_text(PROJECT)
    first = _run(tmp_path, "--jobs", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    t = {s["step"]: s for s in srsly.read_json(tmp_path / "metrics" / "timings-all.json")["steps"]}
    timings = srsly.read_json(tmp_path / "metrics" / "timings-all.json")
    assert [s["step"] for s in timings["steps"]] == ["setup", "slow1", "slow2", "join"]
    end = {k: v["end"] for k, v in t.items()}
    assert t["slow1"]["start"] >= end["setup"]  and t["slow2"]["start"] >= end["setup"] 
    assert t["slow2"]["start"] < end["slow1"]  # the two 1.5 s steps ran at the same time
    assert t["join"]["start"] >= max(end["slow1"], end["slow2"]) 
    assert timings["wall_seconds"] < timings["total_seconds"]
    assert (tmp_path / "out" / "d").read_text() == "d"
    # the step's output went to its log; a thread count set by the user is kept
    assert "threads 3" in (tmp_path / "metrics" / "logs" / "slow2.log").read_text()
    # --plan replays the measured seconds through the same rule without running anything
    plan = _run(tmp_path, "--jobs", "2", "--plan", "metrics/timings-all.json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    rows = {line.split()[0]: line.split() for line in plan.stdout.splitlines()[1:-1]}
    assert list(rows) == ["setup", "slow1", "slow2", "join"]
    assert rows["slow1"][2] == rows["slow2"][2] == rows["setup"][3]  # both start when setup ends
    assert rows["slow1"][1] != rows["slow2"][1]  # in the two slots
    assert float(plan.stdout.splitlines()[-1].split()[-1]) <= timings["wall_seconds"] / 60 + 0.05
    assert srsly.read_json(tmp_path / "metrics" / "timings-all.json") == timings  # nothing ran
    again = _run(tmp_path, "--jobs", "2")
    assert again.returncode == 0
    for step in ("setup", "slow1", "slow2", "join"):
        assert f"Skipping '{step}'" in again.stdout, again.stdout
    # the lock file is weasel's: the one-after-another runner (spacy project run) skips too
    seq = subprocess.run([sys.executable, "-m", "weasel", "run", "join", str(tmp_path)], capture_output=True, text=True)
    assert seq.returncode == 0 and "Skipping 'join'" in seq.stdout, seq.stdout + seq.stderr


def test_a_failed_step_stops_what_depends_on_it(tmp_path):
    (tmp_path / "project.yml").write_text(PROJECT)
    out = _run(tmp_path, "--jobs", "2", "--vars.fail", "3")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "slow2.log" in out.stdout and "not run: join" in out.stdout
    t = {s["step"]: s for s in srsly.read_json(tmp_path / "metrics" / "timings-all.json")["steps"]}
    assert t["slow2"]["returncode"] == 3 and t["slow1"]["returncode"] == 0  # the step already running finished
    assert not (tmp_path / "out" / "d").exists()
    fixed = _run(tmp_path, "--jobs", "2")  # after the fix only what did not complete runs
    assert fixed.returncode == 0
    assert "Skipping 'setup'" in fixed.stdout and "Skipping 'slow1'" in fixed.stdout
    assert "Skipping 'slow2'" not in fixed.stdout and (tmp_path / "out" / "d").exists()


INTERRUPT_PROJECT = textwrap.dedent(
    """
    title: toy
    directories: ["out"]
    commands:
      - name: setup
        script:
          - "python -c \\"import pathlib; pathlib.Path('out/a').write_text('a')\\""
        outputs:
          - "out/a"
      - name: long
        script:
          - "python -c \\"import os, time, pathlib; pathlib.Path('out/pid').write_text(str(os.getpid())); time.sleep(120); pathlib.Path('out/b').write_text('b')\\""
        deps:
          - "out/a"
        outputs:
          - "out/b"
    workflows:
      all:
        - setup
        - long
    """
)


def test_an_interrupt_stops_the_running_steps_and_keeps_the_finished_ones(tmp_path):
    import os
    import signal
    import time

    (tmp_path / "project.yml").write_text(INTERRUPT_PROJECT)
    # SIGINT as a terminal's Ctrl-C finds it: a test run started in the background of a
    # non-interactive shell (`./.ci/run &`) has SIGINT ignored, and an ignored signal is
    # inherited, so the runner would never see the interrupt (this test then hung 60 s).
    runner = subprocess.Popen([sys.executable, "-m", "tokner.workflow", "all", "--jobs", "2"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={"PATH": "/usr/bin:/bin"},
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pid_file = tmp_path / "out" / "pid"
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert pid_file.exists(), runner.communicate(timeout=10)[0]
    step_pid = int(pid_file.read_text())
    t0 = time.time()
    runner.send_signal(signal.SIGINT)
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 130, out
    assert time.time() - t0 < 30  # the 120 s step did not run to its end
    assert "interrupted: stopped long" in out and "Traceback" not in out, out
    time.sleep(0.2)
    try:
        os.kill(step_pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "the interrupted step's process is still running"
    lock = srsly.read_yaml(tmp_path / "project.lock")
    assert "setup" in lock and "long" not in lock
    assert not (tmp_path / "out" / "b").exists()
    steps = srsly.read_json(tmp_path / "metrics" / "timings-all.json")["steps"]
    assert [s["step"] for s in steps] == ["setup", "long"] and steps[0]["returncode"] == 0


def test_logs_and_timings_follow_a_metrics_override(tmp_path):
    """``--vars.metrics DIR`` (or a vars file setting it, as configs/best.vars.yml does) puts the
    step logs and the timing table under DIR, where that workflow's scores go."""
    (tmp_path / "project.yml").write_text(PROJECT.replace('  fail: "0"\n', '  fail: "0"\n  metrics: "metrics"\n'))
    out = _run(tmp_path, "--jobs", "2", "--vars.metrics", "runs/best")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "threads 3" in (tmp_path / "runs" / "best" / "logs" / "slow2.log").read_text()
    steps = srsly.read_json(tmp_path / "runs" / "best" / "timings-all.json")["steps"]
    assert [s["step"] for s in steps] == ["setup", "slow1", "slow2", "join"]
    assert not (tmp_path / "metrics").exists()


def test_plan_schedule_replays_the_runner_rule():
    """Up to `jobs` steps at once, a step after its predecessors, the first ready one in
    workflow order first: with 2 slots the short slow2 ends first and join waits for slow1."""
    from tokner.workflow import plan_schedule

    steps = ["setup", "slow1", "slow2", "join"]
    before = {"setup": [], "slow1": ["setup"], "slow2": ["setup"], "join": ["slow1", "slow2"]}
    seconds = {"setup": 1, "slow1": 10, "slow2": 4, "join": 2}
    two = [(p["step"], p["slot"], p["start"], p["end"]) for p in plan_schedule(steps, before, seconds, 2)]
    assert two == [("setup", 0, 0, 1), ("slow1", 0, 1, 11), ("slow2", 1, 1, 5), ("join", 0, 11, 13)]
    one = [(p["step"], p["start"], p["end"]) for p in plan_schedule(steps, before, seconds, 1)]
    assert one == [("setup", 0, 1), ("slow1", 1, 11), ("slow2", 11, 15), ("join", 15, 17)]
    # a step listed later but ready earlier fills a free slot: priority is only among ready steps
    steps3 = ["a", "b", "c"]
    before3 = {"a": [], "b": ["a"], "c": []}
    got = [(p["step"], p["start"]) for p in plan_schedule(steps3, before3, {"a": 3, "b": 3, "c": 1}, 2)]
    assert got == [("a", 0), ("c", 0), ("b", 3)]


def test_plan_names_the_steps_without_seconds_and_rejects_other_json(tmp_path, monkeypatch):
    import pytest

    from tokner.workflow import main, read_step_seconds

    (tmp_path / "project.yml").write_text(PROJECT)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.json").write_text('{"setup": 1, "slow1": 2}')
    with pytest.raises(SystemExit, match=r"no seconds for steps \['slow2', 'join'\]"):
        main(["all", "--jobs", "2", "--plan", "s.json"])
    (tmp_path / "bad.json").write_text('["setup", 1]')
    with pytest.raises(SystemExit, match="expected a timings-NAME.json"):
        read_step_seconds("bad.json")
    assert read_step_seconds("s.json") == {"setup": 1.0, "slow1": 2.0}
