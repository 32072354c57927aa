"""flows/pipeline.py parameter overrides: validated against the whole schema before any stage, written like
``dvc exp run -S`` (comments kept), parsed from ``-S key=value`` like DVC."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from ganops.config import ConfigError, load_params

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pipeline():
    spec = importlib.util.spec_from_file_location("ganops_flows_pipeline", REPO / "flows" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def project(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.mark.parametrize(("overrides", "field"), [
    ({"train.los": "hinge"}, "train.los"),                       # typo: unknown key
    ({"train.total_kimg": -1}, "train.total_kimg"),             # out of range
    ({"evaluate.protocol": "tf"}, "evaluate.protocol"),         # not one of the literals
    ({"train.batch_size": "many"}, "train.batch_size"),         # wrong type
])
def test_invalid_override_fails_before_any_stage_naming_the_field(pipeline, project, overrides, field):
    before = (project / "params.yaml").read_text()
    with pytest.raises(ConfigError, match=rf"- {field}:"):
        pipeline.ganops_pipeline.fn(overrides=overrides, project_dir=str(project))
    assert (project / "params.yaml").read_text() == before
    assert not (project / "mlflow.db").exists()  # no MLflow run was started


def test_overrides_are_coerced_written_in_place_and_keep_comments(pipeline, project):
    path = project / "params.yaml"
    params, typed = pipeline.validate_overrides(path, {"train.loss": "hinge", "train.total_kimg": "0.5",
                                                       "train.betas_g": [0.0, 0.99], "seed": 3})
    assert typed == {"train.loss": "hinge", "train.total_kimg": 0.5, "train.betas_g": [0.0, 0.99], "seed": 3}
    assert params.train.total_kimg == 0.5 and params.train.betas_g == (0.0, 0.99)
    pipeline.apply_overrides(path, typed)
    text = path.read_text()
    assert "# ganops parameters" in text and "# fashion_mnist | folder" in text
    reread = load_params(path)
    assert (reread.train.loss, reread.train.total_kimg, reread.train.betas_g, reread.seed) == ("hinge", 0.5,
                                                                                              (0.0, 0.99), 3)
    # Everything not overridden is unchanged.
    original = yaml.safe_load((REPO / "params.yaml").read_text())
    new = yaml.safe_load(text)
    assert new["evaluate"] == original["evaluate"] and new["train"]["ngf"] == original["train"]["ngf"]


def test_set_args_parse_like_dvc(pipeline):
    assert pipeline.parse_set_args(["train.loss=hinge", "train.total_kimg=5", "prepare.max_train=null",
                                    "train.diffaugment=translation,color"]) == {
        "train.loss": "hinge", "train.total_kimg": 5, "prepare.max_train": None,
        "train.diffaugment": "translation,color"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        pipeline.parse_set_args(["train.loss"])


# ---- Typed overrides (PipelineOverrides) ---------------------------------------------------------------------------

def test_overrides_model_mirrors_every_params_key(pipeline):
    """Generated from ganops.config: every params.yaml key is an optional field with the same constraints."""
    from ganops.config import Params

    schema = pipeline.PipelineOverrides.model_json_schema()
    defs = schema["$defs"]
    for section, info in Params.model_fields.items():
        name = info.alias or section
        assert name in schema["properties"], name
        if section in pipeline._SECTION_OVERRIDES:
            model = pipeline._SECTION_OVERRIDES[section]
            assert set(model.model_fields) == set(info.annotation.model_fields), section
            assert not defs[model.__name__].get("required")  # every field optional
    train = defs["TrainOverrides"]["properties"]
    assert train["total_kimg"]["exclusiveMinimum"] == 0 and "default" not in train["total_kimg"]
    assert train["precision"]["enum"] == ["fp32", "bf16", "fp16", "auto"]
    assert defs["EvaluateOverrides"]["properties"]["num_samples"]["minimum"] == 2


def test_overrides_nested_and_dotted_forms_agree_and_only_set_keys_count(pipeline):
    nested = pipeline.parse_overrides({"train": {"loss": "hinge", "betas_g": [0.0, 0.99]}, "validate": {"duplicates":
                                                                                                       "fail"}})
    dotted = pipeline.parse_overrides({"train.loss": "hinge", "train.betas_g": [0.0, 0.99],
                                       "validate.duplicates": "fail"})
    assert nested.dotted() == dotted.dotted() == {"train.loss": "hinge", "train.betas_g": [0.0, 0.99],
                                                  "validate.duplicates": "fail"}
    # An explicit null is an override where params.yaml allows null; a left-out key is not.
    assert pipeline.parse_overrides({"prepare.max_train": None, "seed": 4}).dotted() == {"prepare.max_train": None,
                                                                                         "seed": 4}
    assert pipeline.parse_overrides(None).dotted() == {} == pipeline.parse_overrides({"train": {}}).dotted()
    # The config's field validators come along (DiffAugment names are normalised, Adam betas range-checked).
    assert pipeline.parse_overrides({"train.diffaugment": "translation, color"}).dotted() == {
        "train.diffaugment": "translation,color"}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"train": {"betas_g": [1.5, 0.9]}}, r"- train.betas_g: Value error, Adam betas must lie in \[0, 1\)"),
    ({"train.diffaugment": "zoom"}, r"- train.diffaugment: .*unknown DiffAugment policy"),
    ({"train.loss": None}, r"- train.loss: Input should be a valid string"),    # not nullable in params.yaml
    ({"trian.loss": "hinge"}, r"- trian: Extra inputs are not permitted"),       # unknown section
    ({"train.loss.x": 1}, r"- train.loss.x: Extra inputs are not permitted"),
    ({"train..loss": 1}, r"not params.yaml keys"),
])
def test_bad_overrides_name_the_field(pipeline, overrides, message):
    with pytest.raises(ConfigError, match=message):
        pipeline.parse_overrides(overrides)


def test_cross_field_rules_are_checked_against_params_yaml_before_any_stage(pipeline, project):
    """prepare.source=folder needs prepare.folder: a rule over two keys, checked with the merged params.yaml."""
    with pytest.raises(ConfigError, match="prepare.folder must be set"):
        pipeline.ganops_pipeline.fn(overrides={"prepare": {"source": "folder"}}, project_dir=str(project))
    assert not (project / "mlflow.db").exists()


# ---- Report and FID history ---------------------------------------------------------------------------------------

def _fake_run(project: Path, with_training_evals: bool) -> None:
    import json

    run_dir = project / "runs" / "train"
    run_dir.mkdir(parents=True)
    lines = [{"step": 5, "kimg": 0.16, "loss_G": 1.0, "loss_D": 1.2},
             {"step": 5, "kimg": 0.16, "diversity_ratio": 0.9}]
    if with_training_evals:
        lines += [{"step": 5, "kimg": 0.16, "metric/fid": 301.5, "metric/kid_mean": 0.31, "metric/kid_std": 0.01},
                  {"step": 10, "kimg": 0.32, "metric/fid": 250.25, "metric/kid_mean": 0.25, "metric/kid_std": 0.01}]
    (run_dir / "stats.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 11, "kim')
    (run_dir / "training_options.json").write_text(json.dumps({"eval_num_samples": 8}))
    (project / "metrics").mkdir()
    (project / "metrics" / "eval.json").write_text(json.dumps(
        {"fid": 240.0, "kid_mean": 0.2, "kid_std": 0.01, "num_generated": 16, "num_real": 16, "kimg": 0.32,
         "protocol": "legacy_tensorflow"}))
    (project / "reports" / "validation").mkdir(parents=True)
    (project / "reports" / "validation" / "result.json").write_text(json.dumps(
        {"success": True, "data_docs": "reports/validation/data_docs/index.html"}))
    (project / "reports" / "registration.json").write_text(json.dumps(
        {"model_name": "m", "version": 3, "alias": "champion", "reason": "first", "model_uri": "models:/m@champion"}))


def test_fid_history_reads_in_training_evaluations_then_the_evaluate_stage(pipeline, project):
    _fake_run(project, with_training_evals=True)
    params = load_params(project / "params.yaml")
    rows = pipeline.fid_history(project, params)
    assert rows == [
        {"source": "training", "step": 5, "kimg": 0.16, "fid": 301.5, "kid_mean": 0.31, "num_samples": 8},
        {"source": "training", "step": 10, "kimg": 0.32, "fid": 250.25, "kid_mean": 0.25, "num_samples": 8},
        {"source": "evaluate", "step": None, "kimg": 0.32, "fid": 240.0, "kid_mean": 0.2, "num_samples": 16},
    ]
    md = pipeline.summary_markdown(project, params, "abc123", "7", [pipeline.StageResult("train", True, 2.0)])
    assert "| training | 10 | 0.32 | 250.2 | 0.25 | 8 |" in md and "| evaluate |  | 0.32 | 240 | 0.2 | 16 |" in md
    assert "| fid | 240.0 |" in md
    assert "version **3**, alias **@champion**" in md
    assert "(http://127.0.0.1:5000/#/experiments/7/runs/abc123)" in md and "mlflow ui --backend-store-uri" in md
    assert f"({(project / 'runs/train/fakes-latest.png').as_uri()})" in md
    assert f"({(project / 'reports/validation/data_docs/index.html').as_uri()})" in md
    assert "No in-training evaluations" not in md


def test_report_without_training_evaluations_or_outputs_says_so(pipeline, project):
    params = load_params(project / "params.yaml")
    md = pipeline.summary_markdown(project, params, "r", "1", [])
    assert pipeline.fid_history(project, params) == []
    assert "No FID yet" in md and "Nothing registered in this run." in md
    _fake_run(project, with_training_evals=False)
    assert [r["source"] for r in pipeline.fid_history(project, params)] == ["evaluate"]
    assert "No in-training evaluations" in pipeline.summary_markdown(project, params, "r", "1", [])


def test_mlflow_link_uses_a_tracking_server_when_configured(pipeline, project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5055")
    md = pipeline.summary_markdown(project, load_params(project / "params.yaml"), "r1", "2", [])
    assert "(http://127.0.0.1:5055/#/experiments/2/runs/r1)" in md and "mlflow ui" not in md


# ---- Skipping DVC start-ups for stages `dvc status` reports unchanged ---------------------------------------------

def test_stages_run_from_the_first_changed_one(pipeline):
    every = list(pipeline.STAGES)
    assert pipeline.stages_to_run(every, set()) == []                              # a no-op: no `dvc repro` at all
    assert pipeline.stages_to_run(every, {"train"}) == ["train", "evaluate", "register"]
    assert pipeline.stages_to_run(every, {"register", "validate"}) == every[1:]   # order comes from the pipeline
    assert pipeline.stages_to_run(["evaluate", "register"], {"train"}) == []      # unselected upstream stays unrun
    assert pipeline.stages_to_run(every, None) == every                            # status unknown: ask DVC per stage


def test_changed_stages_is_none_when_dvc_status_fails(pipeline, tmp_path):
    assert pipeline.changed_stages(tmp_path) is None  # not a DVC repository


def test_fid_history_reads_what_the_training_loop_writes(pipeline, project):
    """The real loop (tiny, CPU) with a stand-in metric: the history has its evaluations in order, as it logged them
    (the FID values come from the stand-in; computing real ones needs the Inception network, see tests/e2e)."""
    import json

    import numpy as np

    from ganops.config import TrainConfig, parse_params
    from ganops.training.loop import training_loop

    prepared = project / "prepared"
    prepared.mkdir()
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (32, 1, 8, 8)).astype(np.uint8), np.arange(32) % 2
    np.savez(prepared / "train.npz", images=images, labels=labels)
    np.savez(prepared / "test.npz", images=images[:8], labels=labels[:8])
    (prepared / "summary.json").write_text(json.dumps({
        "source": "synthetic", "resolution": 8, "channels": 1, "num_classes": 2, "class_names": ["a", "b"],
        "counts": {"train": 32, "test": 8}, "dataset_sha256": "synthetic"}))
    fids = iter([300.0, 250.0, 275.0, 260.0])
    train = dict(z_dim=8, ngf=8, ndf=8, batch_size=8, total_kimg=0.032, sample_every_kimg=0.016,
                 checkpoint_every_kimg=0.016, eval_every_kimg=0.016, eval_num_samples=6, log_every_steps=1,
                 grid_size=2, mode_collapse_num_images=8, device="cpu", channels_last=False, num_threads=1,
                 run_dir=str(project / "runs" / "train"))
    training_loop(TrainConfig(**train), prepared_dir=prepared, seed=0, progress=False,
                  metric_fn=lambda G: {"fid": next(fids), "kid_mean": 0.1})
    params = parse_params({"train": {**train, "run_dir": "runs/train"}})
    rows = pipeline.fid_history(project, params)
    assert [r["source"] for r in rows] == ["training"] * len(rows) and len(rows) >= 2
    assert [r["fid"] for r in rows] == [300.0, 250.0, 275.0, 260.0][:len(rows)]
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows) and rows[-1]["kimg"] == pytest.approx(0.032)
    assert {r["num_samples"] for r in rows} == {6} and {r["kid_mean"] for r in rows} == {0.1}


def test_report_link_to_the_mlflow_run_never_carries_a_password(pipeline):
    url = pipeline._mlflow_run_url("https://alice:s3cr3t@mlflow.example.org:5000/", "7", "abc123")
    assert url == "https://alice:***@mlflow.example.org:5000/#/experiments/7/runs/abc123"
    assert pipeline._mlflow_run_url("sqlite:////tmp/mlflow.db", "1", "r").startswith("http://127.0.0.1:5000/#/")


def test_stream_lines_delivers_lines_while_the_stage_runs(pipeline):
    # The child prints a line, then waits until the parent has seen it: only a streaming reader can pass this.
    import subprocess
    import tempfile
    import time

    flag = Path(tempfile.mkdtemp()) / "seen"
    script = ("import sys, time, pathlib\n"
              "print('first line', flush=True)\n"
              "sys.stderr.write('bar 10%\\rbar 50%\\rbar 100%\\n'); sys.stderr.flush()\n"
              f"p = pathlib.Path({str(flag)!r})\n"
              "t = time.time()\n"
              "while not p.exists() and time.time() - t < 20: time.sleep(0.05)\n"
              "print('saw flag' if p.exists() else 'no flag', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line == "first line":
            flag.touch()

    t0 = time.time()
    output = pipeline.stream_lines(proc, on_line)
    assert seen == ["first line", "bar 10%", "bar 50%", "bar 100%", "saw flag"]
    assert proc.returncode == 0 and "saw flag" in output and time.time() - t0 < 20


def test_stream_lines_keeps_split_utf8_whole_and_cuts_endless_lines(pipeline):
    import subprocess

    script = ("import sys, time\n"
              "out = sys.stdout.buffer\n"
              "for b in 'é€ ok\\n'.encode():\n"
              "    out.write(bytes([b])); out.flush(); time.sleep(0.002)\n"
              f"out.write(b'x' * ({pipeline.MAX_LINE_CHARS} * 2 + 5) + b'\\r\\n' + b'last'); out.flush()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: list[str] = []
    pipeline.stream_lines(proc, seen.append)
    assert seen[0] == "é€ ok"
    assert [len(s) for s in seen[1:4]] == [pipeline.MAX_LINE_CHARS, pipeline.MAX_LINE_CHARS, 5]
    assert seen[4:] == ["last"]


def test_stream_lines_kills_the_child_when_the_consumer_fails(pipeline):
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def boom(line: str) -> None:
        raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"):
        pipeline.stream_lines(proc, boom)
    assert proc.returncode is not None  # killed and reaped, not left running
