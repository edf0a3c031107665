"""Documents/second and peak memory of ``tokner annotate``: the local engine vs the Ray engine.

Both engines annotate the same folder of ``.txt`` files with the same pipeline, in the
same run, one after the other, each in a fresh subprocess (``OMP_NUM_THREADS=1``):

* ``local``: one process, ``nlp.pipe`` with ``--n-process 1``;
* ``ray``: a local Ray cluster of ``--ray-num-cpus`` CPUs and ``--ray-actors`` actors
  (1 CPU each, one pipeline each), ``--ray-block-size`` documents per block.

For each it reports the documents, the entities, the wall time of the whole run
(``seconds``: loading the pipeline, or starting the cluster and its actors, included),
the start-up part of it (``startup_seconds``: ``spacy.load`` for local, ``ray.init``
for ray; the actors load their pipelines inside the remaining time), documents/s over
the whole run and over the rest, and the peak resident memory: of the driver process
alone, and of the driver with all its descendants summed (Ray's GCS, raylet and worker
processes; pages shared between processes count once per process, so the sum is an
upper bound). Memory is sampled every 0.05 s with psutil; without psutil only the
largest finished child's peak (``getrusage``) is reported. The two JSONL outputs are
compared byte for byte.

    python benchmarks/annotate_throughput.py --model /tmp/cnn_small/model-best \\
        --texts ../shared/raredis/brat/dev --output metrics/annotate_throughput.json

Without ``--model`` it uses ``training/cnn/model-best`` when that exists, else a
blank pipeline with the paper's tokenizer, ``tokner_sentencizer`` and an
``entity_ruler`` (then the figures measure the engines' overhead, not a model).
On a shared CPU compare numbers from the same run only.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from tokner.utils.textfile import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "training" / "cnn" / "model-best"
DEFAULT_TEXTS = ROOT.parent / "shared" / "raredis" / "brat" / "dev"

# Runs one engine in the subprocess and prints its AnnotateSummary as JSON.
_RUNNER = """
import json, sys
from tokner.annotate import RayOptions, annotate
a = json.loads(sys.argv[1])
ray = RayOptions(**a.pop("ray")) if a["engine"] == "ray" else None
s = annotate(a.pop("model"), a.pop("input"), a.pop("output"), ray_options=ray, progress=False, overwrite=True, **a)
print("SUMMARY " + json.dumps(s.as_dict()))
"""


def _ruler_pipeline(path: Path) -> Path:
    import spacy

    nlp = spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1"}}})
    nlp.add_pipe("tokner_sentencizer")
    nlp.add_pipe("entity_ruler").add_patterns([
        {"label": "RAREDISEASE", "pattern": [{"LOWER": "syndrome"}]},
        {"label": "SYMPTOM", "pattern": [{"LOWER": {"IN": ["pain", "fatigue", "fever", "nausea"]}}]},
        {"label": "SIGN", "pattern": [{"LOWER": {"IN": ["enlarged", "abnormal"]}}, {"IS_ALPHA": True}]},
    ])
    nlp.to_disk(path)
    return path


def _measure(cmd: List[str], env: Dict[str, str]) -> Dict:
    try:
        import psutil
    except ImportError:
        psutil = None
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_driver = peak_total = 0
    if psutil is not None:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                procs = [root] + root.children(recursive=True)
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        rss.append(0)
                peak_driver = max(peak_driver, rss[0])
                peak_total = max(peak_total, sum(rss))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{err[-3000:]}")
    line = next(l for l in out.splitlines() if l.startswith("SUMMARY "))
    summary = json.loads(line[len("SUMMARY "):])
    result = {**summary, "process_wall_seconds": wall}
    busy = summary["seconds"] - summary["startup_seconds"]
    result["docs_per_second_after_startup"] = summary["docs"] / busy if busy > 0 else None
    if psutil is not None:
        result["peak_rss_driver_mib"] = peak_driver / 2**20
        result["peak_rss_total_mib"] = peak_total / 2**20
    else:
        result["peak_rss_largest_child_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help=f"pipeline folder (default: {DEFAULT_MODEL} if it exists, else an entity_ruler one)")
    p.add_argument("--texts", default=str(DEFAULT_TEXTS), help="folder of .txt files (default: the RareDis dev split)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ray-actors", type=int, default=2)
    p.add_argument("--ray-num-cpus", type=int, default=2)
    p.add_argument("--ray-block-size", type=int, default=8)
    p.add_argument("--output", help="write the results as JSON here")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="annotate-bench-"))
    model = args.model or (str(DEFAULT_MODEL) if DEFAULT_MODEL.exists() else str(_ruler_pipeline(tmp / "ruler")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    common = {"model": model, "input": args.texts, "batch_size": args.batch_size}
    runs = {
        "local": {**common, "engine": "local", "output": str(tmp / "local.jsonl")},
        "ray": {**common, "engine": "ray", "output": str(tmp / "ray.jsonl"),
                "ray": {"actors": args.ray_actors, "cpus_per_actor": 1.0, "num_cpus": args.ray_num_cpus,
                        "block_size": args.ray_block_size, "object_store_memory": 200 * 2**20}},
    }
    results = {
        "model": model, "texts": args.texts, "batch_size": args.batch_size,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_start": os.getloadavg()},
        "engines": {},
    }
    for name, run in runs.items():
        print(f"== {name}", flush=True)
        res = _measure([sys.executable, "-c", _RUNNER, json.dumps(run)], env)
        results["engines"][name] = res
        mem = (f"peak RSS driver {res['peak_rss_driver_mib']:.0f} MiB, with descendants {res['peak_rss_total_mib']:.0f} MiB"
               if "peak_rss_driver_mib" in res else f"peak RSS {res['peak_rss_largest_child_mib']:.0f} MiB")
        rest = res["docs_per_second_after_startup"]
        print(f"{res['docs']} docs, {res['entities']} entities in {res['seconds']:.1f} s "
              f"(startup {res['startup_seconds']:.1f} s): {res['docs_per_second']:.2f} docs/s, "
              f"{rest:.2f} docs/s after startup; {mem}", flush=True)
    same = (tmp / "local.jsonl").read_bytes() == (tmp / "ray.jsonl").read_bytes()
    results["outputs_identical"] = same
    print(f"outputs identical: {same}")
    if args.output:
        write_json(args.output, results)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
