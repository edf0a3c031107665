"""project.yml is valid, its workflows name real commands, and the `paper` preset's
configs validate (they cannot run here: GPU, hub models and an API key)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tokner.workflow import expand_vars_file

ROOT = Path(__file__).resolve().parents[1]


def test_project_yml_is_valid_and_complete():
    from weasel.util import load_project_config

    cfg = load_project_config(ROOT, overrides={"vars.raredis_dir": "x"})
    names = {c["name"] for c in cfg["commands"]}
    for wf, steps in cfg["workflows"].items():
        assert set(steps) <= names, (wf, set(steps) - names)
    assert {"all", "paper"} <= set(cfg["workflows"])
    # every command's config dep exists in the repository
    for c in cfg["commands"]:
        for dep in c.get("deps", []):
            if dep.startswith("configs/"):
                assert (ROOT / dep).is_file(), dep


def test_paper_vars_file_only_sets_known_vars():
    args = expand_vars_file(["--vars-file", str(ROOT / "configs" / "paper.vars.yml")], project_dir=ROOT)
    pairs = dict(zip(args[::2], args[1::2]))
    assert pairs["--vars.transformer"] == "emilyalsentzer/Bio_ClinicalBERT"
    assert pairs["--vars.lora_config"] == "configs/lora_paper.cfg"
    bad = ROOT / "tests" / "_bad_vars.yml"
    try:
        bad.write_text("no_such_var: 1\n")
        with pytest.raises(SystemExit, match="unknown project vars"):
            expand_vars_file(["--vars-file", str(bad)], project_dir=ROOT)
    finally:
        bad.unlink()


def test_paper_workflow_runs_no_offline_model_step_for_api_models():
    """With llm_model = "gpt-4" no step materialises SmolLM2 into ./gpt-4 or depends on it."""
    import yaml
    from weasel.util import load_project_config

    paper_vars = yaml.safe_load((ROOT / "configs" / "paper.vars.yml").read_text())
    cfg = load_project_config(ROOT, overrides={f"vars.{k}": v for k, v in paper_vars.items()})
    commands = {c["name"]: c for c in cfg["commands"]}
    model = paper_vars["llm_model"]
    for step in cfg["workflows"]["paper"]:
        c = commands[step]
        paths = list(c.get("deps", [])) + list(c.get("outputs", []))
        assert not [p for p in paths if p.split("/")[0] == model], (step, paths)
        assert not [line for line in c["script"] if "offline smollm2" in line], (step, c["script"])
    # the `all` workflow still materialises the offline LLM it prompts and the folder its steps use
    cfg_all = load_project_config(ROOT, overrides={"vars.raredis_dir": "x"})
    all_cmds = {c["name"]: c for c in cfg_all["commands"]}
    scripts = [line for step in cfg_all["workflows"]["all"] for line in all_cmds[step]["script"]]
    offline = cfg_all["vars"]["llm_model"]
    assert any(f"offline smollm2 {offline}" in line for line in scripts)


def _debug_config(path, *overrides):
    out = subprocess.run([sys.executable, "-m", "spacy", "debug", "config", str(path), *overrides],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "✘" not in out.stdout, out.stdout + out.stderr


def test_paper_supervised_configs_validate():
    _debug_config("configs/bert.cfg", "--paths.transformer", "emilyalsentzer/Bio_ClinicalBERT", "--training.max_steps", "20000")
    _debug_config("configs/cnn.cfg", "--training.max_steps", "20000")


@pytest.mark.parametrize("name", ["llm_zero_openai", "llm_few_openai", "llm_rag_openai"])
def test_paper_llm_configs_validate(name, tmp_path):
    # fill-config builds the pipeline: keep its cache and knowledge folder in tmp
    knowledge = tmp_path / "knowledge"
    knowledge.mkdir()
    (knowledge / "doc.txt").write_text("Alport syndrome is a rare disease. It causes hearing loss.")
    text = (ROOT / "configs" / f"{name}.cfg").read_text()
    text = re.sub(r'(?m)^cache = .*$', f'cache = "{tmp_path / "cache"}"', text)
    text = re.sub(r'(?m)^knowledge = .*$', f'knowledge = "{knowledge}"', text)
    src, filled = tmp_path / f"src_{name}.cfg", tmp_path / f"{name}.cfg"
    src.write_text(text)
    out = subprocess.run([sys.executable, "-m", "spacy", "init", "fill-config", str(src), str(filled)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    _debug_config(filled, "--paths.llm_model", "gpt-4", "--paths.train", "corpus/train.spacy", "--paths.dev", "corpus/dev.spacy")


def test_paper_lora_config_validates():
    from tokner.lora.train import load_training_config

    nlp, resolved, settings = load_training_config(ROOT / "configs" / "lora_paper.cfg",
                                                   {"paths.base_model": "nlpie/Llama2-MedTuned-7b"})
    assert settings["r"] == 64 and settings["alpha"] == 256 and settings["learning_rate"] == 2e-4
    assert "tokner_lora_ner" in nlp.pipe_names


def test_parallel_runner_waits_for_what_each_step_needs():
    """`tokner.workflow all --jobs 2`: the order each step of `all` waits for, from deps/outputs."""
    from weasel.util import load_project_config

    from tokner.workflow import split_jobs, step_predecessors

    cfg = load_project_config(ROOT, overrides={"vars.raredis_dir": "x"})
    commands = {c["name"]: c for c in cfg["commands"]}
    steps = cfg["workflows"]["all"]
    before = step_predecessors(steps, commands)
    assert before["models"] == [] and before["corpus"] == ["models"]  # models has no deps: a set-up step
    assert before["train-lora"] == ["models", "corpus"]
    assert before["llm-rag"] == ["models", "corpus"]
    assert before["train-cnn-vectors"] == ["models", "corpus", "static-vectors"]
    assert before["evaluate-lora"] == ["models", "corpus", "train-lora"]
    assert set(before["compare"]) == {"models", "corpus", "llm-rag", "evaluate-cnn-vectors", "evaluate-bert",
                                      "evaluate-cnn", "llm-few", "llm-zero", "evaluate-lora", "ensemble",
                                      "bert-doc-type"}
    # the fast pipeline waits for MiniLM's dev predictions and the document-type model only
    assert set(before["bert-doc-type"]) == {"models", "corpus", "train-bert", "evaluate-bert", "train-doc-type"}
    assert set(before["ensemble"]) == {"models", "corpus", "train-lora", "train-cnn-vectors", "evaluate-cnn-vectors",
                                       "train-bert", "evaluate-bert", "train-cnn", "evaluate-cnn", "evaluate-lora",
                                       "train-doc-type"}
    assert before["train-doc-type"] == ["models", "corpus"]
    # the first two steps that can run at once are the two longest
    assert [s for s in steps if set(before[s]) <= {"models", "corpus"}][2:4] == ["train-lora", "llm-rag"]
    assert split_jobs(["--jobs", "2", "--vars.x", "1"]) == (2, ["--vars.x", "1"])
    assert split_jobs(["--jobs=3"]) == (3, [])
    with pytest.raises(SystemExit, match="positive integer"):
        split_jobs(["--jobs", "0"])


def test_best_workflow_writes_beside_all_not_over_it():
    """`make best`: configs/best.vars.yml sets only known vars, and every trained pipeline and
    score of the `best` workflow lands under training/best or metrics/best."""
    import yaml
    from weasel.util import load_project_config

    args = expand_vars_file(["--vars-file", str(ROOT / "configs" / "best.vars.yml")], project_dir=ROOT)
    pairs = dict(zip(args[::2], args[1::2]))
    assert pairs["--vars.lora_max_steps"] == "1600" and pairs["--vars.bert_max_steps"] == "1500"
    best_vars = yaml.safe_load((ROOT / "configs" / "best.vars.yml").read_text())
    cfg = load_project_config(ROOT, overrides={"vars.raredis_dir": "x", **{f"vars.{k}": v for k, v in best_vars.items()}})
    commands = {c["name"]: c for c in cfg["commands"]}
    steps = cfg["workflows"]["best"]
    assert steps[-3:] == ["bert-doc-type", "ensemble-best", "compare-best"]
    # the two longest trainings are the first two steps that can run once the corpus is there,
    # MiniLM (the longer of the two others) next
    from tokner.workflow import step_predecessors

    before = step_predecessors(steps, commands)
    assert [s for s in steps if set(before[s]) <= {"models", "corpus"}][2:5] == ["train-lora", "train-decoder", "train-bert"]
    # the plain CNN is not a member of the best ensemble, so the workflow does not train it
    assert "train-cnn" not in steps and "cnn=" not in commands["ensemble-best"]["script"][0]
    assert pairs["--vars.decoder_max_steps"] == "1500"
    # compare-best reads only what the workflow's steps write, and writes its report beside `all`'s
    produced = {o for s in steps for o in commands[s].get("outputs", [])}
    assert set(commands["compare-best"]["deps"]) <= produced | {"corpus/dev.spacy"}
    assert commands["compare-best"]["outputs"][0] == "reports/best/comparison.md"
    assert "ensemble-best=metrics/best/ensemble_best-dev.json" in commands["compare-best"]["script"][0]
    outputs = [o for s in steps for o in commands[s].get("outputs", [])]
    trained = [o for o in outputs if o.startswith(("training", "metrics"))]
    assert "training/best/ensemble_best" in trained and "metrics/best/lora-dev.spacy" in trained
    assert "training/best/bert_doc_type" in trained
    assert all(o.startswith(("training/best/", "metrics/best/")) for o in trained), trained
    assert all(o.startswith(("training/best/", "metrics/best/", "reports/best/", "corpus/", "assets/")) for o in outputs), outputs
    assert "--lora.max_steps 1600" in commands["train-lora"]["script"][0]
    # the decoder member: SmolLM2's first 12 layers attending both ways, its tokenizer's pad token quoted
    from weasel.util import split_command

    argv = split_command(commands["train-decoder"]["script"][0])
    assert argv[argv.index("--components.transformer.model.bidirectional") + 1] == "true"
    assert argv[argv.index("--components.transformer.model.tokenizer_config.pad_token") + 1] == "<|im_end|>"
    search, build = commands["ensemble-best"]["script"]
    argv = split_command(search)
    assert argv[argv.index("--weight-grid") + 1:argv.index("--weight-grid") + 3] == ["1", "--output"]  # equal weights
    members = [a for a in argv if "=metrics/best/" in a]
    assert members == ["lora=metrics/best/lora-dev.spacy", "bert=metrics/best/bert-dev.spacy",
                       "cnn-vectors=metrics/best/cnn_vectors-dev.spacy", "decoder=metrics/best/decoder-dev.spacy"]
    # the pipeline is built from the same members, in the same order, as the search
    built = [a for a in split_command(build) if "=training/best/" in a]
    assert [m.split("=")[0] for m in built] == [m.split("=")[0] for m in members]
