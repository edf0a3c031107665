"""The shipped llm configs assemble (replay for real; the others with the model swapped)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("spacy_llm")

import spacy  # noqa: E402
from spacy.tokens import Doc, DocBin  # noqa: E402

import tokner.llm  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TEXT = "Marfan syndrome causes joint pain. It is rare."


def assemble(cfg: Path, out: Path, overrides: dict):
    """What `spacy assemble CONFIG OUT --key value` does."""
    config = spacy.util.load_config(cfg, overrides=overrides, interpolate=False)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    nlp.initialize()
    nlp.to_disk(out)
    return spacy.load(out)


def _responses(tmp_path: Path) -> Path:
    path = tmp_path / "answers.txt"
    path.write_text("######\nMarfan : B-RAREDISEASE\nsyndrome : I-RAREDISEASE\ncauses : O\njoint : B-SYMPTOM\n"
                    "pain : I-SYMPTOM\n. : O\n######\nIt : O\nis : O\nrare : O\n. : O\n")
    return path


def test_replay_config_assembles(tmp_path):
    nlp = assemble(CONFIGS / "llm_replay.cfg", tmp_path / "out", {"paths.responses": str(_responses(tmp_path))})
    assert nlp.pipe_names == ["tokner_sentencizer", "llm"]
    assert [(e.text, e.label_) for e in nlp(TEXT).ents] == [("Marfan syndrome", "RAREDISEASE"), ("joint pain", "SYMPTOM")]


@pytest.mark.parametrize("name", ["llm_zero", "llm_few", "llm_rag", "llm_openai"])
def test_generation_configs_resolve(tmp_path, name):
    nlp0 = spacy.blank("en")
    db = DocBin()
    for words, ents in ((["Marfan", "syndrome", "is", "rare", "."], ["B-RAREDISEASE", "I-RAREDISEASE", "O", "O", "O"]),
                        (["Pain", "is", "common", "."], ["B-SYMPTOM", "O", "O", "O"])):
        db.add(Doc(nlp0.vocab, words=words, ents=ents, sent_starts=[True] + [False] * (len(words) - 1)))
    db.to_disk(tmp_path / "train.spacy")
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "a.txt").write_text("Marfan syndrome affects connective tissue.")
    overrides = {
        "components.llm.model": {"@llm_models": "tokner.ReplayModel.v1", "path": str(_responses(tmp_path))},
        "paths.cache": str(tmp_path / "cache"),
    }
    text = (CONFIGS / f"{name}.cfg").read_text()
    if "paths.train" in text:
        overrides["paths.train"] = str(tmp_path / "train.spacy")
    if name == "llm_few":
        overrides["components.llm.task.examples.k"] = 2
    if name == "llm_rag":
        overrides["paths.knowledge"] = str(kb)
        bm25 = {"@llm_misc": "tokner.BM25Index.v1"}
        overrides["components.llm.task.examples.index"] = bm25
        overrides["components.llm.task.knowledge.index"] = bm25
    nlp = assemble(CONFIGS / f"{name}.cfg", tmp_path / "out", overrides)
    assert [e.text for e in nlp(TEXT).ents] == ["Marfan syndrome", "joint pain"]
    cfg = spacy.util.load_config(CONFIGS / f"{name}.cfg", interpolate=True)
    # no cache by default: a relative path would be created in whichever folder loads the pipeline
    assert cfg["components"]["llm"]["cache"]["path"] is None
    assert cfg["components"]["llm"]["cache"]["@llm_misc"] == "tokner.BatchCache.v1"
    assert any(p.name.startswith("model-") for p in (tmp_path / "cache").iterdir()), "cache override not used"


def test_project_assembles_llm_pipelines_with_a_cache_folder():
    """The configs default to no cache; the project's evaluation steps give each one its folder."""
    import yaml

    project = yaml.safe_load((ROOT / "project.yml").read_text())
    steps = {c["name"]: c["script"] for c in project["commands"]}
    for name in ("llm-zero", "llm-few", "llm-rag"):
        assemble_line = next(line for line in steps[name] if "spacy assemble" in line)
        assert "cache" not in assemble_line  # the saved pipeline keeps no (relative) cache path
        eval_line = next(line for line in steps[name] if "llm_eval.py" in line)
        assert f"--set components.llm.cache.path=${{vars.cache}}/{name.replace('-', '_')}" in eval_line, eval_line


def test_assembled_llm_pipeline_round_trips_through_bytes(tmp_path):
    """nlp.to_bytes()/from_bytes() carry the task (labels, template) and the model's record."""
    nlp = assemble(CONFIGS / "llm_replay.cfg", tmp_path / "out", {"paths.responses": str(_responses(tmp_path))})
    data = nlp.to_bytes()
    assert isinstance(nlp.get_pipe("llm").to_bytes(), bytes)
    nlp2 = spacy.util.load_model_from_config(nlp.config, auto_fill=True).from_bytes(data)
    assert [(e.text, e.label_) for e in nlp2(TEXT).ents] == [("Marfan syndrome", "RAREDISEASE"), ("joint pain", "SYMPTOM")]
    # a local model's record (its absolute folder) travels too, and the weights are not loaded for it
    hf = spacy.util.registry.llm_models.get("tokner.HFCausalLM.v1")(name=str(tmp_path))
    copy = spacy.util.registry.llm_models.get("tokner.HFCausalLM.v1")(name="elsewhere").from_bytes(hf.to_bytes())
    assert copy._recorded_path == str(tmp_path.resolve()) and hf._model is None and copy._model is None


@pytest.mark.parametrize("content,name,message", [
    (b"", "empty.txt", r"empty.txt: no responses in the file"),
    (b"######\nFabry : B-RAREDISEASE\n\xff\xfe\n", "latin.txt", r"latin.txt:3: not UTF-8"),
    (b'{"tokens": ["a"], "response": "a : O"}\n[1, 2]\n', "list.jsonl", r"list.jsonl: line 2 is not a JSON object"),
    (b'{"tokens": ["a"], "response": "a : O"}\n{"tokens": \n', "broken.jsonl", r"broken.jsonl:2: not valid JSON"),
    (b'{"tokens": ["a"]}\n', "noresp.jsonl", r"noresp.jsonl: line 1 has no 'response'"),
])
def test_bad_responses_file_fails_assemble_naming_file_and_line(tmp_path, content, name, message):
    import subprocess
    import sys

    responses = tmp_path / name
    responses.write_bytes(content)
    out = tmp_path / "pipe"
    proc = subprocess.run([sys.executable, "-m", "spacy", "assemble", str(CONFIGS / "llm_replay.cfg"), str(out),
                           "--paths.responses", str(responses)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    import re

    assert re.search(message, proc.stdout + proc.stderr), proc.stdout + proc.stderr
    assert not out.exists()  # nothing half-written


def test_failed_assemble_over_an_existing_pipeline_leaves_it_as_it_was(tmp_path):
    """A bad responses file fails before anything is written: the pipeline already in the
    folder keeps its config and its responses (no mix of new config and old answers)."""
    import subprocess
    import sys

    out = tmp_path / "pipe"
    good = _responses(tmp_path)
    ok = subprocess.run([sys.executable, "-m", "spacy", "assemble", str(CONFIGS / "llm_replay.cfg"), str(out),
                         "--paths.responses", str(good)], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    bad = subprocess.run([sys.executable, "-m", "spacy", "assemble", str(CONFIGS / "llm_replay.cfg"), str(out),
                          "--paths.responses", str(empty)], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "empty.jsonl: no responses in the file" in bad.stdout + bad.stderr
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [(e.text, e.label_) for e in spacy.load(out)(TEXT).ents] == [("Marfan syndrome", "RAREDISEASE"),
                                                                      ("joint pain", "SYMPTOM")]
