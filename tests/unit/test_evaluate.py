"""evaluate stage, reference-stat cache and the one metrics API (evaluate_generator, make_metric_fn, compare).

Only test_evaluate_* runs the real Inception network (4 + 4 images); the rest use a cheap deterministic stand-in
extractor so they test the plumbing (sources, layouts, caching, keys) in milliseconds.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ganops.config import EvaluateConfig
from ganops.data.dataset import save_split
from ganops.metrics import ref_stats
from ganops.metrics.api import compare
from ganops.metrics.fid import FeatureStats, fid_from_features
from tests.fakes import ChannelMeanFeatures


def _imgs(n: int, seed: int, c: int = 1) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (n, c, 8, 8)).astype(np.uint8)


# ---- compare(): sources and layouts -------------------------------------------------------------------------------

def test_compare_npz_layouts_stats_and_folder_agree(tmp_path):
    ex = ChannelMeanFeatures()
    a, b = _imgs(30, 0), _imgs(30, 1)
    np.savez(tmp_path / "a.npz", images=a)
    np.savez(tmp_path / "b_nhwc.npz", images=b.transpose(0, 2, 3, 1))
    raw = compare(str(tmp_path / "a.npz"), str(tmp_path / "b_nhwc.npz"), extractor=ex, kid_subset_size=10)
    fa, fb = ex.features(a), ex.features(b)
    assert raw["fid"] == pytest.approx(fid_from_features(fa, fb), rel=1e-9)
    assert (raw["n_a"], raw["n_b"], raw["protocol"], raw["weights_sha256"]) == (30, 30, "legacy_tensorflow", "f" * 64)
    assert raw["kid_mean"] is not None and raw["kid_std"] is not None

    stats = FeatureStats()
    stats.append(fb)
    np.savez(tmp_path / "b_stats.npz", mu=stats.mean, sigma=stats.cov)
    cached = compare(str(tmp_path / "a.npz"), str(tmp_path / "b_stats.npz"), extractor=ex)
    assert cached["fid"] == pytest.approx(raw["fid"], rel=1e-9)  # cached-stats path == raw path
    assert cached["kid_mean"] is None and cached["n_b"] is None

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(b):
        Image.fromarray(img[0]).save(folder / f"{i:03d}.png")
    from_folder = compare(str(tmp_path / "a.npz"), str(folder), extractor=ex, kid_subset_size=10)
    assert from_folder["fid"] == pytest.approx(raw["fid"], rel=1e-9)


def test_compare_models_uri_uses_pyfunc_predict(monkeypatch, tmp_path):
    import mlflow.pyfunc

    seen = {}

    class FakeModel:
        def predict(self, df):
            seen["df"] = df
            n, seed = int(df["num_images"][0]), int(df["seed"][0])
            return np.random.RandomState(seed).randint(0, 256, (n, 8, 8, 1)).astype(np.uint8)  # N x H x W x C

    monkeypatch.setattr(mlflow.pyfunc, "load_model", lambda uri: seen.setdefault("uri", uri) and FakeModel())
    np.savez(tmp_path / "a.npz", images=_imgs(12, 3))
    out = compare(str(tmp_path / "a.npz"), "models:/gan@champion", num_samples=12, seed=5,
                  extractor=ChannelMeanFeatures(), kid_subset_size=6)
    assert seen["uri"] == "models:/gan@champion" and list(seen["df"].columns) == ["num_images", "seed"]
    expected = np.random.RandomState(5).randint(0, 256, (12, 8, 8, 1)).astype(np.uint8).transpose(0, 3, 1, 2)
    ex = ChannelMeanFeatures()
    assert out["fid"] == pytest.approx(fid_from_features(ex.features(_imgs(12, 3)),
                                                         ex.features(expected)), rel=1e-9)


def test_compare_bad_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder or file"):
        compare(str(tmp_path / "missing"), str(tmp_path / "missing"), extractor=ChannelMeanFeatures())
    np.savez(tmp_path / "x.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match="'images' or 'mu' and 'sigma'"):
        compare(str(tmp_path / "x.npz"), str(tmp_path / "x.npz"), extractor=ChannelMeanFeatures())
    np.savez(tmp_path / "one.npz", images=_imgs(1, 0))
    with pytest.raises(ValueError, match="at least 2"):
        compare(str(tmp_path / "one.npz"), str(tmp_path / "one.npz"), extractor=ChannelMeanFeatures())


def test_compare_refuses_cached_statistics_from_another_protocol_or_network(tmp_path, caplog):
    ex = ChannelMeanFeatures()
    real = FeatureStats(max_kept=0)
    real.append(ex.features(_imgs(20, 4)))
    np.savez(tmp_path / "b.npz", images=_imgs(12, 3))

    def cache_file(name, **changes):
        fields = dict(protocol="legacy_tensorflow", weights_sha256=ex.weights_sha256, dataset_sha256="d" * 64,
                      split="test", num_images=20, precision="fp32", device="cpu")
        key = ref_stats.RefStatsKey(**{**fields, **changes})
        ref_stats.save(tmp_path / name, ref_stats.RefStats.from_stats(real, key))
        return str(tmp_path / name)

    same = compare(cache_file("same.npz"), str(tmp_path / "b.npz"), extractor=ex)
    plain = tmp_path / "plain.npz"  # statistics made elsewhere: no stored key, taken as they are
    np.savez(plain, mu=real.mean, sigma=real.cov)
    assert compare(str(plain), str(tmp_path / "b.npz"), extractor=ChannelMeanFeatures())["fid"] == same["fid"]
    with pytest.raises(ValueError, match=r"protocol='clean', this comparison uses protocol='legacy_tensorflow'"):
        compare(cache_file("clean.npz", protocol="clean"), str(tmp_path / "b.npz"), extractor=ex)
    with pytest.raises(ValueError, match="computed with weights_sha256="):
        compare(cache_file("other.npz", weights_sha256="0" * 64), str(tmp_path / "b.npz"), extractor=ex)
    with caplog.at_level("WARNING", logger="ganops.metrics.api"):
        on_gpu = compare(cache_file("gpu.npz", device="cuda"), str(tmp_path / "b.npz"), extractor=ex)
    assert on_gpu["fid"] == same["fid"] and "statistics computed on cuda" in caplog.text


# ---- reference-stat cache and registry ----------------------------------------------------------------------------

def test_ref_stats_reused_only_for_matching_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        s = FeatureStats(4, max_kept=10)
        s.append(np.random.RandomState(len(calls)).rand(10, 4))
        return s

    key = ref_stats.RefStatsKey("legacy_tensorflow", "a" * 64, "d" * 64, "test", 10, "fp32", "cpu")
    first, cached1 = ref_stats.get_or_compute(tmp_path, key, compute)
    again, cached2 = ref_stats.get_or_compute(tmp_path, key, compute)
    assert (cached1, cached2, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(first.sigma, again.sigma)
    assert again.features.shape == (10, 4)
    other = ref_stats.RefStatsKey("legacy_tensorflow", "b" * 64, "d" * 64, "test", 10, "fp32", "cpu")
    _, cached3 = ref_stats.get_or_compute(tmp_path, other, compute)
    assert not cached3 and len(calls) == 2
    # Statistics measured on another device are not reused (GPU and CPU features differ in the last bits).
    on_gpu = ref_stats.RefStatsKey("legacy_tensorflow", "a" * 64, "d" * 64, "test", 10, "fp32", "cuda")
    _, cached4 = ref_stats.get_or_compute(tmp_path, on_gpu, compute)
    assert not cached4 and len(calls) == 3
    # A file whose stored key disagrees (renamed/copied by hand) is never used.
    path = ref_stats.cache_path(tmp_path, key)
    ref_stats.save(path, ref_stats.RefStats(first.mu, first.sigma, 10, first.features, other))
    assert ref_stats.load(path, key) is None


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_npz", "key_not_json", "mu_missing"])
def test_unreadable_ref_stats_cache_is_recomputed(tmp_path, damage, caplog):
    """A damaged cache file (disk fault, a copy cut short, edited by hand) is recomputed and rewritten, never a crash."""
    calls = []

    def compute():
        calls.append(1)
        s = FeatureStats(4, max_kept=10)
        s.append(np.random.RandomState(0).rand(10, 4))
        return s

    key = ref_stats.RefStatsKey("legacy_tensorflow", "a" * 64, "d" * 64, "test", 10, "fp32", "cpu")
    first, _ = ref_stats.get_or_compute(tmp_path, key, compute)
    path = ref_stats.cache_path(tmp_path, key)
    good = path.read_bytes()
    damaged = {
        "truncated": lambda: path.write_bytes(good[: len(good) // 2]),
        "empty": lambda: path.write_bytes(b""),
        "not_npz": lambda: path.write_bytes(b"<html>proxy error</html>" * 20),
        "key_not_json": lambda: np.savez(path, key="{torn", mu=first.mu),
        "mu_missing": lambda: np.savez(path, key=json.dumps(dataclasses.asdict(key), sort_keys=True)),
    }
    damaged[damage]()
    with caplog.at_level("WARNING", logger="ganops.metrics.ref_stats"):
        again, cached = ref_stats.get_or_compute(tmp_path, key, compute)
    assert (cached, len(calls)) == (False, 2)
    np.testing.assert_array_equal(again.sigma, first.sigma)
    assert any("unreadable" in r.getMessage() and path.name in r.getMessage() for r in caplog.records)
    assert ref_stats.get_or_compute(tmp_path, key, compute)[1] and len(calls) == 2  # rewritten: reused next time


def _tiny_prepared(tmp_path, n_test=40):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for split, n in (("train", 8), ("test", n_test)):
        images = np.random.RandomState(n).randint(0, 256, (n, 1, 8, 8)).astype(np.uint8)
        save_split(prepared, split, images, np.zeros(n, dtype=np.int64))
    (prepared / "summary.json").write_text(json.dumps({"dataset_sha256": "e" * 64,
                                                       "counts": {"train": 8, "test": n_test}}))
    return prepared


class _NoiseG(torch.nn.Module):
    """A stand-in generator: z -> tanh of a fixed projection, (B, 1, 8, 8) in [-1, 1]."""

    z_dim, num_classes = 4, 0

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 64, generator=torch.Generator().manual_seed(1)))

    def forward(self, z, c=None):
        return torch.tanh(z @ self.w).view(-1, 1, 8, 8)


def test_metric_fn_and_evaluate_generator_share_one_path(tmp_path, monkeypatch):
    """In-training evaluation (make_metric_fn) and the evaluate stage (evaluate_generator) give the same numbers
    from generated statistics vs the cached reference statistics of the test split."""
    from ganops.metrics import api

    ex = ChannelMeanFeatures()
    monkeypatch.setattr(api, "stage_extractor", lambda cfg: ex)
    prepared = _tiny_prepared(tmp_path)
    cfg = EvaluateConfig(num_samples=30, batch_size=16, ref_stats_dir=str(tmp_path / "cache"), kid_subset_size=10)
    G = _NoiseG()
    out = api.make_metric_fn(cfg, prepared_dir=prepared, seed=3)(G)
    assert out["num_generated"] == 30 and out["num_real"] == 30 and out["fid"] > 0 and out["kid_mean"] is not None
    again = api.evaluate_generator(G, ex, cfg, prepared, seed=3)
    assert again == out
    # By hand: the same seed's samples and the first 30 test images through the same extractor.
    from ganops.data.dataset import load_split
    from ganops.metrics.preprocess import quantize_to_uint8
    from ganops.training.sampling import iter_samples

    fake = np.concatenate([ex.features(quantize_to_uint8(b))
                           for b in iter_samples(G, 30, seed=3, batch_size=16, device=torch.device("cpu"))])
    real = ex.features(np.array(load_split(prepared, "test")[0][:30]))
    assert out["fid"] == pytest.approx(fid_from_features(fake, real), rel=1e-6)
    assert len(list((tmp_path / "cache").glob("test-30-*.npz"))) == 1  # reference statistics cached once


# ---- evaluate stage (real network, tiny) --------------------------------------------------------------------------

@pytest.fixture
def run_and_data(tmp_path):
    from ganops.models import build_G
    from ganops.training.snapshot import save_snapshot

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for split, n in (("train", 8), ("test", 6)):
        images = np.random.RandomState(n).randint(0, 256, (n, 1, 28, 28)).astype(np.uint8)
        save_split(prepared, split, images, np.zeros(n, dtype=np.int64))
    (prepared / "summary.json").write_text(json.dumps({"dataset_sha256": "e" * 64, "counts": {"train": 8, "test": 6}}))
    G_kwargs = dict(z_dim=8, ngf=8, resolution=28, channels=1, num_classes=0)
    torch.manual_seed(0)
    G = build_G("dcgan", **G_kwargs).eval()
    run_dir = tmp_path / "run"
    save_snapshot(run_dir / "network-snapshot.pt", G, dict(arch="dcgan", G_kwargs=G_kwargs, **G_kwargs, kimg=1.5,
                                                           step=10))
    return run_dir, prepared


def test_evaluate_writes_eval_json_and_reuses_reference_cache(run_and_data, tmp_path):
    from ganops.evaluate import evaluate
    from ganops.io import sha256_file

    run_dir, prepared = run_and_data
    cfg = EvaluateConfig(num_samples=4, batch_size=4, kid_subsets=5, kid_subset_size=1000,
                         ref_stats_dir=str(tmp_path / "cache"), out=str(tmp_path / "metrics" / "eval.json"))
    with pytest.warns(UserWarning, match="clamping"):
        first = evaluate(cfg, run_dir=run_dir, prepared_dir=prepared, seed=3)
    written = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    for key in ("fid", "kid_mean", "kid_std", "num_generated", "num_real", "protocol", "weights_sha256",
                "snapshot_sha256", "kimg"):
        assert key in written, key
    assert written["num_generated"] == 4 and written["num_real"] == 4 and written["kimg"] == 1.5
    assert written["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # evaluate.device: auto
    assert written["snapshot_sha256"] == sha256_file(run_dir / "network-snapshot.pt")
    assert np.isfinite(written["fid"]) and written["fid"] > 0
    (cache_file,) = (tmp_path / "cache").glob("test-4-legacy_tensorflow-*.npz")
    written_ns = cache_file.stat().st_mtime_ns
    with pytest.warns(UserWarning, match="clamping"):
        second = evaluate(cfg, run_dir=run_dir, prepared_dir=prepared, seed=3)
    assert second["fid"] == first["fid"] and second["kid_mean"] == first["kid_mean"]  # deterministic
    # Reused, not recomputed: a recompute rewrites the file (equal results alone would not tell).
    assert cache_file.stat().st_mtime_ns == written_ns
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache_file.name]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_evaluate_device_cuda_without_gpu_names_the_param_before_writing(run_and_data, tmp_path):
    from ganops.config import ConfigError
    from ganops.evaluate import evaluate

    run_dir, prepared = run_and_data
    cfg = EvaluateConfig(num_samples=4, device="cuda", ref_stats_dir=str(tmp_path / "cache"),
                         out=str(tmp_path / "metrics" / "eval.json"))
    with pytest.raises(ConfigError, match=r"evaluate\.device is 'cuda' but no CUDA device"):
        evaluate(cfg, run_dir=run_dir, prepared_dir=prepared, seed=3)
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "cache").exists()


def test_evaluate_without_snapshot_says_what_to_run(tmp_path):
    from ganops.evaluate import evaluate

    with pytest.raises(FileNotFoundError, match="ganops train"):
        evaluate(EvaluateConfig(), run_dir=tmp_path, prepared_dir=tmp_path, seed=0)


@pytest.mark.parametrize("key,value", [("resolution", 32), ("channels", 3)])
def test_evaluate_refuses_snapshot_of_other_image_size(run_and_data, tmp_path, key, value):
    # A 28x28x1 generator against 32x32 or RGB data would give a finite but meaningless FID; it must be refused
    # before any Inception work and before eval.json is written.
    from ganops.evaluate import evaluate

    run_dir, prepared = run_and_data
    summary = json.loads((prepared / "summary.json").read_text())
    (prepared / "summary.json").write_text(json.dumps({**summary, "resolution": 28, "channels": 1, key: value}))
    out = tmp_path / "metrics" / "eval.json"
    cfg = EvaluateConfig(num_samples=4, batch_size=4, ref_stats_dir=str(tmp_path / "cache"), out=str(out))
    with pytest.raises(ValueError, match=f"{key} .* vs {value}"):
        evaluate(cfg, run_dir=run_dir, prepared_dir=prepared, seed=0)
    assert not out.exists()


def test_exact_fp32_sets_cuda_flags_on_cuda_only_and_restores_them():
    from ganops.metrics.inception import exact_fp32

    flags = ((torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32"),
             (torch.backends.cudnn, "benchmark"), (torch.backends.cudnn, "deterministic"))
    saved = [getattr(m, n) for m, n in flags]
    loose = (True, True, True, False)  # what a training process may have set
    try:
        for (m, n), v in zip(flags, loose):
            setattr(m, n, v)
        with exact_fp32("cpu"):
            assert tuple(getattr(m, n) for m, n in flags) == loose
        with exact_fp32("cuda"):  # the flags are plain process settings: settable without a GPU
            assert tuple(getattr(m, n) for m, n in flags) == (False, False, False, True)
        assert tuple(getattr(m, n) for m, n in flags) == loose
        with pytest.raises(KeyError), exact_fp32(torch.device("cuda")):
            raise KeyError("restored on errors too")
        assert tuple(getattr(m, n) for m, n in flags) == loose
    finally:
        for (m, n), v in zip(flags, saved):
            setattr(m, n, v)


def test_junk_npz_source_names_the_file(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"junk\.npz: not a readable \.npz"):
        compare(str(junk), str(junk), extractor=ChannelMeanFeatures())
