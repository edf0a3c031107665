"""Portable pipelines: the LoRA pipe carries its base model, every component round-trips
through to_disk/to_bytes, and a packaged pipeline loads on a "fresh machine" (another
folder, another working directory, hub offline) with the same predictions."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
from spacy.util import load_model_from_config

from tiny_models import make_tiny_llama

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
TORCH_THREADS = 1  # conftest: one torch thread for this module
NAME = "tokner_lora_ner"
BASE_REL = "assets/models/tiny-llama"  # relative, as in configs/lora.cfg: it exists only in the build folder
TEXTS = [
    "Alport syndrome causes hearing loss. Patients may have fever.",
    "Diabetes is common.  Pain and fatigue (asthenia) occur in it!",
    "Epidermolysis bullosa affects the skin.\n\nBlisters appear early.",
    "",
]


def blank_nlp(**tokenizer):
    return spacy.blank("en", config={"nlp": {"tokenizer": {"@tokenizers": "tokner.PaperTokenizer.v1", **tokenizer}}})


def predictions(nlp, texts=TEXTS):
    """Entities (token and char offsets, label) and their scores, per text."""
    out = []
    for doc in nlp.pipe(texts):
        out.append({"ents": [[e.start, e.end, e.start_char, e.end_char, e.label_] for e in doc.ents],
                    "scores": list(doc.spans["lora"].attrs["scores"]) if "lora" in doc.spans else None})
    return out


def assert_same(a, b, rel=1e-5):
    assert [x["ents"] for x in a] == [x["ents"] for x in b]
    for x, y in zip(a, b):
        assert x["scores"] == pytest.approx(y["scores"], rel=rel)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """A tiny llama at a relative path of a build folder and a LoRA pipe on it with random
    (non-zero) adapter weights; ``save(dest, **config)`` writes a pipeline from inside the
    build folder (as training in the checkout does) and returns it."""
    from tokner.lora.modeling import attach_adapter, load_base_model, make_lora_config

    work = tmp_path_factory.mktemp("build")
    base = make_tiny_llama(work / BASE_REL)
    torch.manual_seed(0)
    peft_model = attach_adapter(load_base_model(str(base), "cpu"), lora_config=make_lora_config(4, 8, 0.0))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.normal_(0.0, 0.5)  # lora_B starts at zero: make the adapter matter

    def make(**config):
        nlp = blank_nlp()
        nlp.add_pipe("tokner_sentencizer")
        pipe = nlp.add_pipe(NAME, config={"base_model": BASE_REL, "device": "cpu", "batch_size": 4,
                                          "label_bias": {"O": -3.0}, **config})
        pipe.set_adapter_from(peft_model)
        return nlp

    def save(dest, **config):
        cwd = Path.cwd()
        os.chdir(work)
        try:
            nlp = make(**config)
            nlp.to_disk(dest)
            reference = predictions(nlp)  # the in-memory pipe: float32 base, as trained
        finally:
            os.chdir(cwd)
        return dest, reference

    return {"work": work, "base": base, "save": save}


@pytest.fixture(scope="module")
def saved(build, tmp_path_factory):
    """The tiny pipeline saved with its bundled base (defaults: auto, bfloat16)."""
    return build["save"](tmp_path_factory.mktemp("saved") / "pipe")


def test_bundled_base_is_bfloat16_and_used_where_the_relative_path_is_missing(build, saved):
    from safetensors import safe_open
    from safetensors.torch import load_file

    pipe_dir, reference = saved
    assert not (Path.cwd() / BASE_REL).exists()
    bundled = pipe_dir / NAME / "base"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in bundled.iterdir()}
    assert json.loads((bundled / "config.json").read_text())["torch_dtype"] == "bfloat16"
    src, copy = load_file(str(build["base"] / "model.safetensors")), load_file(str(bundled / "model.safetensors"))
    assert set(src) == set(copy)
    for k, t in src.items():
        assert copy[k].dtype == torch.bfloat16 and torch.equal(copy[k], t.to(torch.bfloat16)), k
    with safe_open(str(bundled / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    size = (bundled / "model.safetensors").stat().st_size
    assert size < 0.51 * (build["base"] / "model.safetensors").stat().st_size
    # the config keeps the relative path; loading takes the bundled copy
    assert spacy.util.load_config(pipe_dir / "config.cfg")["components"][NAME]["base_model"] == BASE_REL
    nlp = spacy.load(pipe_dir)
    pipe = nlp.get_pipe(NAME)
    assert Path(pipe.base_source) == bundled.resolve()
    assert next(pipe.lm.parameters()).dtype == torch.float32  # computed in float32 on CPU (torch_dtype auto)
    got = predictions(nlp)
    assert any(x["ents"] for x in got)
    # bfloat16 rounding of the base moves the scores a little (here: not the entities)
    assert_same(got, reference, rel=0.05)
    # saved again (from its own copy, already bfloat16): the same bytes
    nlp.to_disk(pipe_dir.parent / "again")
    again = pipe_dir.parent / "again" / NAME / "base" / "model.safetensors"
    assert again.read_bytes() == (bundled / "model.safetensors").read_bytes()
    nlp.to_disk(pipe_dir)  # into the folder it was loaded from: the copy stays
    assert (bundled / "model.safetensors").read_bytes() == again.read_bytes()
    assert_same(predictions(spacy.load(pipe_dir.parent / "again")), got, rel=1e-6)


def test_float32_bundle_reproduces_the_trained_pipe(build, tmp_path):
    pipe_dir, reference = build["save"](tmp_path / "fp32", bundle_dtype="float32")
    bundled = pipe_dir / NAME / "base" / "model.safetensors"
    assert bundled.read_bytes() == (build["base"] / "model.safetensors").read_bytes()  # copied as it is
    assert any(x["ents"] for x in reference)
    assert_same(predictions(spacy.load(pipe_dir)), reference)


def test_unbundled_pipe_names_the_missing_base_and_takes_an_override(build, saved, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="tokner.lora.component"):
        pipe_dir, reference = build["save"](tmp_path / "thin", bundle_base=False)
    assert not (pipe_dir / NAME / "base").exists()
    assert "relative path" in caplog.text and BASE_REL in caplog.text
    with pytest.raises(FileNotFoundError) as err:
        spacy.load(pipe_dir)
    msg = str(err.value)
    assert f"[{NAME}]" in msg and repr(BASE_REL) in msg and f"components.{NAME}.base_model" in msg
    nlp = spacy.load(pipe_dir, config={"components": {NAME: {"base_model": str(build["base"])}}})
    assert_same(predictions(nlp), reference)
    # a hub id that cannot be reached (offline) names the override too
    with pytest.raises(OSError, match=f"components.{NAME}.base_model"):
        spacy.load(pipe_dir, config={"components": {NAME: {"base_model": "tokner-tests/no-such-model"}}})
    nlp.to_disk(tmp_path / "thin-again")  # still without a base, now referring to the override
    assert not (tmp_path / "thin-again" / NAME / "base").exists()
    assert spacy.util.load_config(tmp_path / "thin-again" / "config.cfg")["components"][NAME]["base_model"] == str(build["base"])
    # bundle_base = false ignores a bundled copy: a pipeline with one can be pointed elsewhere
    nlp = spacy.load(saved[0], config={"components": {NAME: {"bundle_base": False, "base_model": str(build["base"])}}})
    assert nlp.get_pipe(NAME).base_source == str(build["base"])
    assert_same(predictions(nlp), reference)


def test_save_base_model_handles_bin_weights_and_keeps_narrow_ones(build, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tokner.lora.modeling import is_local_model, save_base_model
    from tokner.testing import copy_tokenizer_files

    assert not is_local_model("HuggingFaceTB/SmolLM2-135M-Instruct") and not is_local_model("gpt2")
    assert all(is_local_model(p) for p in (BASE_REL, "./model", "~/model", "/models/x", str(build["base"])))
    source = load_file(str(build["base"] / "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(str(build["base"]))
    # pytorch_model.bin weights: loaded with transformers, saved as bfloat16 safetensors
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert not (tmp_path / "bin" / "model.safetensors").exists()
    copy_tokenizer_files(build["base"], tmp_path / "bin")
    save_base_model(tmp_path / "bin", tmp_path / "from-bin")
    copy = load_file(str(tmp_path / "from-bin" / "model.safetensors"))
    assert set(copy) == set(source)
    assert all(torch.equal(copy[k], t.to(torch.bfloat16)) for k, t in source.items())
    assert json.loads((tmp_path / "from-bin" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    # a float16 base is no wider than bfloat16: copied as it is
    model.half().save_pretrained(tmp_path / "fp16")
    copy_tokenizer_files(build["base"], tmp_path / "fp16")
    save_base_model(tmp_path / "fp16", tmp_path / "from-fp16", dtype="bfloat16")
    assert ((tmp_path / "from-fp16" / "model.safetensors").read_bytes()
            == (tmp_path / "fp16" / "model.safetensors").read_bytes())
    assert (tmp_path / "from-fp16" / "tokenizer.json").exists()


def test_bad_bundle_settings_are_refused():
    nlp = blank_nlp()
    with pytest.raises(ValueError, match="bundle_base"):
        nlp.add_pipe(NAME, config={"bundle_base": "sometimes"})
    with pytest.raises(ValueError, match="bundle_dtype"):
        nlp.add_pipe(NAME, config={"bundle_dtype": "int8"})


def test_lora_pipeline_round_trips_through_bytes(saved, tmp_path):
    pipe_dir, _ = saved
    nlp = spacy.load(pipe_dir)
    expected = predictions(nlp)
    data = nlp.to_bytes()
    nlp2 = load_model_from_config(nlp.config).from_bytes(data)
    pipe2 = nlp2.get_pipe(NAME)
    assert not Path(pipe2.base_source).is_relative_to(Path.cwd())  # unpacked in the temp dir
    assert_same(predictions(nlp2), expected, rel=1e-6)
    # the pipe alone, and its bytes saved to disk again: the bundled base travels
    pipe3 = blank_nlp().add_pipe(NAME, config={"device": "cpu"}).from_bytes(nlp.get_pipe(NAME).to_bytes())
    assert (Path(pipe3.base_source) / "model.safetensors").exists() and pipe3.lm is not None
    nlp2.to_disk(tmp_path / "from-bytes")
    assert ((tmp_path / "from-bytes" / NAME / "base" / "model.safetensors").read_bytes()
            == (pipe_dir / NAME / "base" / "model.safetensors").read_bytes())
    assert_same(predictions(spacy.load(tmp_path / "from-bytes")), expected, rel=1e-6)
    with pytest.raises(ValueError, match="to_bytes"):
        pipe3.from_bytes(b"\x80")


def test_tokenizer_and_sentencizer_round_trip(tmp_path):
    texts = TEXTS + ["(asymptomatic), one's bluish-black... What?!  \t Yes.\n", " \n"]
    for tokenizer, sentencizer in (({}, {}), ({"sentences": True}, {"overwrite": False})):
        nlp = blank_nlp(**tokenizer)
        nlp.add_pipe("tokner_sentencizer", config=sentencizer)

        def docs(p):
            return [[(t.text, t.whitespace_, t.is_sent_start) for t in d] for d in p.pipe(texts)]

        expected = docs(nlp)
        assert any(len(list(d.sents)) > 1 for d in nlp.pipe(texts))
        copy = load_model_from_config(nlp.config).from_bytes(nlp.to_bytes())
        assert copy.config["nlp"]["tokenizer"] == nlp.config["nlp"]["tokenizer"]
        assert copy.get_pipe("tokner_sentencizer").overwrite == nlp.get_pipe("tokner_sentencizer").overwrite
        assert docs(copy) == expected
        nlp.to_disk(tmp_path / "p")
        assert docs(spacy.load(tmp_path / "p")) == expected
        for doc, text in zip(copy.pipe(texts), texts):
            assert doc.text == text


PACKAGED_SCRIPT = r"""
import json, sys
import spacy
nlp = spacy.load("en_tokner_tiny")
pipe = nlp.get_pipe("tokner_lora_ner")
out = []
for doc in nlp.pipe(json.loads(sys.argv[1])):
    out.append({"ents": [[e.start, e.end, e.start_char, e.end_char, e.label_] for e in doc.ents],
                "scores": list(doc.spans["lora"].attrs["scores"]) if "lora" in doc.spans else None})
print(json.dumps({"base_source": pipe.base_source, "predictions": out}))
"""


@pytest.mark.slow
def test_packaged_pipeline_loads_on_a_fresh_location(saved, tmp_path):
    """spacy package -> wheel -> pip install --target -> spacy.load in another process,
    from an empty working directory, hub offline: same entities and scores."""
    pipe_dir, _ = saved
    expected = predictions(spacy.load(pipe_dir))
    py = sys.executable

    def run(*cmd, **kwargs):
        proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    (tmp_path / "pkg").mkdir()
    # --build none + pip wheel --no-build-isolation: no network (spaCy's own --build wheel
    # runs `python -m build`, which fetches setuptools into an isolated environment)
    run(py, "-m", "spacy", "package", str(pipe_dir), str(tmp_path / "pkg"), "--name", "tokner_tiny",
        "--version", "0.0.1", "--build", "none")
    run(py, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist"),
        str(tmp_path / "pkg" / "en_tokner_tiny-0.0.1"))
    wheel = next((tmp_path / "dist").glob("en_tokner_tiny-0.0.1-*.whl"))
    site = tmp_path / "site"
    run(py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel))
    shutil.rmtree(tmp_path / "pkg")  # nothing left but the installed copy
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    out = json.loads(run(py, "-c", PACKAGED_SCRIPT, json.dumps(TEXTS), cwd=empty, env=env).splitlines()[-1])
    assert Path(out["base_source"]).is_relative_to(site)
    assert any(x["ents"] for x in out["predictions"])
    assert_same(out["predictions"], expected, rel=1e-6)
    assert list(empty.iterdir()) == []  # loading wrote nothing into the working directory
