"""benchmarks/bench_time_to_quality.py: bad input stops before any training; the wall-clock snapshot clock."""

from __future__ import annotations

import pytest
import torch

from tests.fakes import ChannelMeanFeatures
from tests.scripts import load_benchmark


@pytest.fixture()
def ttq():
    return load_benchmark("bench_time_to_quality")


@pytest.mark.parametrize("argv,message", [
    (["run", "--contenders", "default,stylegan"], "unknown contender(s) ['stylegan']"),
    (["run", "--contenders", "default,reference,r3gan"], "at most 2 contenders"),
    (["run", "--budget-min", "4", "--points-min", "2,8"], "go past --budget-min"),
    (["run", "--points-min", "soon"], "comma list of minutes"),
    (["run", "--points-min", "0,2"], "positive minutes"),
    (["evaluate", "--tag", "../x"], "--tag must be 1 to 64 ASCII letters"),
    (["report", "--tag", ""], "--tag must be 1 to 64 ASCII letters"),
    (["report", "--tag", "é"], "--tag must be 1 to 64 ASCII letters"),
    (["report", "--tag", "x" * 65], "--tag must be 1 to 64 ASCII letters"),
    (["train", "--contenders", "default", "--tag", "4x"], "which train does not write"),
])
def test_bad_arguments_stop_before_training(ttq, tmp_path, monkeypatch, argv, message):
    monkeypatch.setattr(ttq.subprocess, "Popen", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(SystemExit) as info:
        ttq.main([*argv, "--out", str(tmp_path)])
    assert message in str(info.value)


def test_clock_keeps_a_snapshot_at_each_point_and_excludes_its_own_time(ttq, tmp_path, monkeypatch):
    now = {"t": 100.0}
    monkeypatch.setattr(ttq.time, "perf_counter", lambda: now["t"])
    saved = []

    def save(path, G, step, nimg):
        saved.append((path.name, step, nimg))
        now["t"] += 5.0  # writing the snapshot takes 5 s, which must not count as training

    clock = ttq._Clock(tmp_path, [1.0, 2.0], save)
    G = torch.nn.Linear(1, 1)
    now["t"] = 159.0
    assert not clock.tick(10, 640, G) and saved == []
    now["t"] = 160.5
    assert not clock.tick(11, 704, G) and saved == [("t00060.pt", 11, 704)]
    now["t"] = 222.0  # 122 s since start, 5 s of it saving: 117 s of training, not yet 120
    assert not clock.tick(12, 768, G)
    now["t"] = 225.5
    assert clock.tick(13, 832, G)  # the last point reached: stop
    assert [s[0] for s in saved] == ["t00060.pt", "t00120.pt"]
    assert [p["kimg"] for p in clock.kept] == [0.704, 0.832] and clock.kept[1]["train_s"] == pytest.approx(120.5)


def _results_file(path, num_samples, num_real, rows):
    import json

    path.write_text(json.dumps({
        "date": "2026-12-05", "machine": {"cpu": "AMD EPYC", "cpu_capability": "AVX2"}, "num_samples": num_samples,
        "num_real": num_real, "contenders": {}, "results": rows, "train": {}}))


def test_report_rerenders_table_plot_and_dvc_curves_from_the_results_json(ttq, tmp_path, monkeypatch):
    monkeypatch.setattr(ttq, "HERE", tmp_path)
    with pytest.raises(SystemExit, match="ttq_results.json not found"):
        ttq.main(["report"])
    rows = {"default": [{"train_s": 120.0, "kimg": 47.9, "fid": 98.05, "num_generated": 1000, "num_real": 2000},
                        {"train_s": 480.0, "kimg": 194.4, "fid": 52.53, "num_generated": 1000, "num_real": 2000,
                         "precision": 0.41, "recall": 0.44, "density": 0.36, "coverage": 0.5}],
            "reference": [{"train_s": 480.6, "kimg": 48.4, "fid": 154.6, "num_generated": 1000, "num_real": 2000,
                           "date": "2026-12-06"}]}
    _results_file(tmp_path / "ttq_results.json", 1000, 2000, rows)
    ttq.main(["report"])
    assert (tmp_path / "ttq_curves" / "default.csv").read_text().splitlines() == [
        "train_min,kimg,fid", "2.0000,47.900,98.0500", "8.0000,194.400,52.5300"]
    assert (tmp_path / "ttq_curves" / "reference.csv").read_text().splitlines()[1] == "8.0100,48.400,154.6000"
    table = (tmp_path / "ttq_results.md").read_text()
    assert "Measured on AMD EPYC (AVX2)" in table and "| default | 8.00 | 194.4 | 52.53 |" in table
    # a row's own date, else the results file's (rows written before rows carried one)
    assert "| 0.360 | 0.500 | 2026-12-05 |" in table and "| 154.60 | 1000 / 2000 |  |  |  |  | 2026-12-06 |" in table
    assert (tmp_path / "ttq.png").stat().st_size > 0


def test_evaluate_adds_its_rows_to_the_same_protocol_and_old_rows_keep_their_date(ttq, tmp_path, monkeypatch):
    import datetime as dt
    import json

    monkeypatch.setattr(ttq, "HERE", tmp_path)
    old_row = {"train_s": 2280.0, "kimg": 1227.8, "fid": 21.59, "num_generated": 10000, "num_real": 10000}
    _results_file(tmp_path / "ttq_results.json", 10000, 10000, {"default": [old_row]})
    out = tmp_path / "ttq_long"
    (out / "default").mkdir(parents=True)
    (out / "default" / "train.json").write_text(json.dumps({"contender": "default", "threads": 1, "seed": 1}))
    today = str(dt.date.today())
    new_row = {**old_row, "kimg": 1307.4, "fid": 21.7, "date": today}
    monkeypatch.setattr(ttq, "evaluate", lambda out, n, seed, names, num_real, only: {"default-seed1": [new_row]})
    ttq.main(["evaluate", "--contenders", "default", "--out", str(out)])
    saved = json.loads((tmp_path / "ttq_results.json").read_text())
    assert saved["results"]["default"][0]["date"] == "2026-12-05"  # the old file's date, not today's
    assert saved["results"]["default-seed1"] == [new_row] and saved["date"] == today
    assert saved["train"]["default-seed1"]["seed"] == 1  # a second seed does not replace the first's row
    assert f"| 21.70 | 10000 / 10000 |  |  |  |  | {today} |" in (tmp_path / "ttq_results.md").read_text()


def test_evaluate_refuses_another_protocol_before_evaluating(ttq, tmp_path, monkeypatch):
    monkeypatch.setattr(ttq, "HERE", tmp_path)
    _results_file(tmp_path / "ttq_results.json", 1000, 2000, {"default": []})
    before = (tmp_path / "ttq_results.json").read_bytes()
    monkeypatch.setattr(ttq, "evaluate", lambda *a, **k: pytest.fail("evaluated before the check"))
    with pytest.raises(SystemExit, match="holds FIDs of 1000 vs 2000 images, not 10000 vs 10000: keep the new "
                       "results apart with --tag NAME"):
        ttq.main(["evaluate", "--contenders", "default", "--out", str(tmp_path / "ttq_long")])
    assert (tmp_path / "ttq_results.json").read_bytes() == before
    (tmp_path / "ttq_results.json").write_text("{truncated")
    with pytest.raises(SystemExit, match="is not a results file of this benchmark"):
        ttq.main(["evaluate", "--contenders", "default", "--out", str(tmp_path / "ttq_long")])


def test_a_tag_keeps_its_results_apart_from_the_main_set(ttq, tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(ttq, "HERE", tmp_path)
    _results_file(tmp_path / "ttq_results.json", 1000, 2000, {"default": []})  # another protocol: no refusal
    before = (tmp_path / "ttq_results.json").read_bytes()
    row = {"train_s": 1134.0, "kimg": 600.0, "fid": 25.0, "num_generated": 10000, "num_real": 10000}
    monkeypatch.setattr(ttq, "evaluate", lambda out, n, seed, names, num_real, only: {"default": [row]})
    with pytest.raises(SystemExit, match="ttq_results_4x.json not found"):
        ttq.main(["report", "--tag", "4x"])
    ttq.main(["evaluate", "--contenders", "default", "--tag", "4x", "--out", str(tmp_path / "ttq_4x")])
    assert (tmp_path / "ttq_results.json").read_bytes() == before
    assert json.loads((tmp_path / "ttq_results_4x.json").read_text())["results"] == {"default": [row]}
    assert (tmp_path / "ttq_curves_4x" / "default.csv").read_text().splitlines()[1] == "18.9000,600.000,25.0000"
    (tmp_path / "ttq_results_4x.md").unlink()
    ttq.main(["report", "--tag", "4x"])
    assert "| default | 18.90 | 600.0 | 25.00 |" in (tmp_path / "ttq_results_4x.md").read_text()
    assert (tmp_path / "ttq_4x.png").stat().st_size > 0
    assert not any((tmp_path / n).exists() for n in ("ttq.png", "ttq_results.md", "ttq_curves"))
    # a second contender joins the tagged set; the tagged file's own protocol is checked
    monkeypatch.setattr(ttq, "evaluate", lambda out, n, seed, names, num_real, only: {"reference": [row]})
    ttq.main(["evaluate", "--contenders", "reference", "--tag", "4x", "--out", str(tmp_path / "ttq_4x")])
    assert set(json.loads((tmp_path / "ttq_results_4x.json").read_text())["results"]) == {"default", "reference"}
    with pytest.raises(SystemExit, match="ttq_results_4x.json holds FIDs of 10000 vs 10000 images, not 1000 vs"):
        ttq.main(["evaluate", "--tag", "4x", "--num-samples", "1000", "--out", str(tmp_path / "ttq_4x")])


def test_result_keys_name_threads_and_training_seed(ttq):
    assert ttq._result_key("default", {"threads": 1}) == "default"
    assert ttq._result_key("default", {"threads": 2, "seed": 0}) == "default-2threads"
    assert ttq._result_key("hinge", {"threads": 2, "seed": 3}) == "hinge-2threads-seed3"
    assert ttq._result_key("reference", {"seed": 1}) == "reference-seed1"


def test_report_refuses_a_corrupt_results_file(ttq, tmp_path, monkeypatch):
    monkeypatch.setattr(ttq, "HERE", tmp_path)
    (tmp_path / "ttq_results.json").write_text('{"runs": [')
    with pytest.raises(SystemExit, match="is not a results file of this benchmark"):
        ttq.main(["report"])


def test_feature_shards_stand_in_for_the_whole_generated_set(ttq, tmp_path, monkeypatch):
    import json

    import numpy as np

    from ganops.config import EvaluateConfig
    from ganops.metrics import api
    from ganops.models import build_G
    from ganops.training.snapshot import save_snapshot

    monkeypatch.setattr(api, "stage_extractor", lambda cfg: ChannelMeanFeatures())
    kw = {"z_dim": 8, "ngf": 4, "resolution": 16, "channels": 1, "num_classes": 0}
    torch.manual_seed(0)
    G = build_G("dcgan", **kw).eval()
    cdir = tmp_path / "default"
    save_snapshot(cdir / "t00060.pt", G, {"arch": "dcgan", "G_kwargs": kw, "kimg": 1.0, "step": 16, **kw})
    (cdir / "train.json").write_text(json.dumps({"points": [{"point_s": 60.0, "snapshot": "t00060.pt"}]}))

    for lo, hi in [(0, 3), (3, 7)]:
        ttq.main(["features", "--contenders", "default", "--eval-points-min", "1", "--range", f"{lo}:{hi}",
                  "--num-samples", "7", "--out", str(tmp_path)])
    shards = ttq._shard_stats(cdir, "t00060.pt", 7, 0)
    whole = api.generated_stats(G, ChannelMeanFeatures(), EvaluateConfig(num_samples=7, device="cpu"), seed=0)
    assert shards.n == whole.n == 7
    np.testing.assert_allclose(shards.kept_features, whole.kept_features, rtol=1e-6)  # the same samples, in order
    np.testing.assert_allclose(shards.cov, whole.cov, rtol=1e-5, atol=1e-12)
    assert ttq._shard_stats(cdir, "t00060.pt", 7, seed=1) is None  # other latents: not these shards

    next((cdir / "features").rglob("000003-000007.npy")).unlink()  # a gap: the shards no longer cover 0..7
    assert ttq._shard_stats(cdir, "t00060.pt", 7, 0) is None


@pytest.mark.parametrize("extra,message", [
    (["--eval-points-min", "1", "--range", "5:3"], "0 <= LO < HI <= --num-samples (7)"),
    (["--eval-points-min", "1", "--range", "a:b"], "--range must be LO:HI"),
    (["--eval-points-min", "2"], "no snapshot kept at 2.0 training minutes"),
])
def test_features_refuses_a_bad_range_or_point(ttq, tmp_path, extra, message):
    import json

    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "train.json").write_text(json.dumps({"points": [{"point_s": 60.0, "snapshot": "x.pt"}]}))
    with pytest.raises(SystemExit) as info:
        ttq.main(["features", "--contenders", "default", "--num-samples", "7", "--out", str(tmp_path), *extra])
    assert message in str(info.value)


def test_a_contender_trained_with_more_threads_gets_its_own_curve(ttq):
    assert ttq._result_key("default", {"points": []}) == "default"  # records from before --threads: one thread
    assert ttq._result_key("default", {"threads": 1}) == "default"
    assert ttq._result_key("default", {"threads": 2}) == "default-2threads"
    with pytest.raises(SystemExit):
        ttq.main(["train", "--contenders", "default", "--threads", "0"])


def test_every_ganops_contender_is_a_valid_train_config(ttq):
    from ganops.config import TrainConfig, load_params

    base = load_params(ttq.ROOT / "params.yaml").train.model_dump()
    for name, (_, overrides) in ttq.CONTENDERS.items():
        assert "-" not in name, f"{name}: '-' separates the thread count in result keys"
        if name == "reference":
            continue
        cfg = TrainConfig(**{**base, **overrides})
        assert {k: getattr(cfg, k) for k in overrides} == {
            k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}, name


def test_train_records_the_whole_recipe_and_a_snapshot_per_point(ttq, tmp_path, monkeypatch):
    from tests.model.conftest import write_prepared

    prepared = write_prepared(tmp_path / "prepared", resolution=28, n=64)
    monkeypatch.setattr(ttq, "_prepared_dir", lambda: prepared)
    n_threads = torch.get_num_threads()
    try:
        record = ttq.train_ganops("lr2e3", tmp_path / "lr2e3", [0.002], seed=0)
    finally:
        torch.set_num_threads(n_threads)
    # the recipe's own keys, those from params.yaml included, so a result stays readable after params.yaml changes
    assert record["config"]["lr_g"] == record["config"]["lr_d"] == 2e-3
    recipe_keys = {"arch", "batch_size", "ngf", "ndf", "loss", "betas_g", "ema_halflife_kimg", "ema_rampup"}
    assert recipe_keys <= set(record["config"])
    assert not set(record["config"]) & ttq._RUN_ONLY_KEYS
    assert [p["point_s"] for p in record["points"]] == [0.12]
    assert (tmp_path / "lr2e3" / record["points"][0]["snapshot"]).is_file()
