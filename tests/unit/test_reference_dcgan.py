"""The pytorch/examples-style baseline of the training benchmark: its networks are ganops' architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganops.models import build_D, build_G
from ganops.training.sampling import iter_samples
from tests.scripts import load_benchmark

ref = load_benchmark("reference_dcgan")


@pytest.mark.parametrize("resolution,channels", [(28, 1), (32, 3), (8, 1)])
def test_example_networks_compute_ganops_networks(resolution, channels):
    torch.manual_seed(0)
    G = build_G("dcgan", z_dim=10, ngf=8, resolution=resolution, channels=channels).eval()
    D = build_D("dcgan", ndf=8, resolution=resolution, channels=channels).eval()
    G_ref, D_ref = ref.example_networks(G, D)
    G_ref, D_ref = G_ref.eval(), D_ref.eval()
    # The example's layer types: stock transposed convs / convs, a conv to one logit, then a sigmoid.
    assert isinstance(G_ref.main[0], torch.nn.ConvTranspose2d) and isinstance(D_ref.main[-1], torch.nn.Sigmoid)
    assert sum(p.numel() for p in G_ref.parameters()) == sum(p.numel() for p in G.parameters())
    assert sum(p.numel() for p in D_ref.parameters()) == sum(p.numel() for p in D.parameters())
    z = torch.randn(4, 10)
    with torch.no_grad():
        x = G(z)
        torch.testing.assert_close(G_ref(z), x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(D_ref(x), torch.sigmoid(D(x)), rtol=1e-5, atol=1e-6)


def test_reference_train_runs_and_reports_per_step_seconds():
    images = np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    G, stats = ref.reference_train(images, steps=3, batch_size=16, ngf=4, ndf=4, z_dim=8)
    assert len(stats["sec_per_step"]) == 3 and all(s > 0 for s in stats["sec_per_step"])
    assert np.isfinite(stats["loss_D"]) and np.isfinite(stats["loss_G"])
    assert G(torch.randn(2, 8)).shape == (2, 1, 8, 8)
    # bench_train's quality section samples it with ganops' sampler, as it does ganops' G_ema
    samples = torch.cat(list(iter_samples(G.eval(), 5, seed=1, batch_size=2)))
    assert samples.shape == (5, 1, 8, 8) and samples.abs().max() <= 1


@pytest.mark.parametrize("num_classes,sn", [(3, False), (0, True)], ids=["conditional", "spectral-norm"])
def test_example_networks_refuse_what_the_example_cannot_hold(num_classes, sn):
    """The example's networks have no class embedding and no spectral norm: a clear refusal, not a load_state_dict
    dump of missing/unexpected keys."""
    G = build_G("dcgan", z_dim=10, ngf=8, resolution=16, channels=1, num_classes=num_classes)
    D = build_D("dcgan", ndf=8, resolution=16, channels=1, num_classes=num_classes, spectral_norm=sn)
    with pytest.raises(ValueError, match="unconditional DCGAN without spectral norm"):
        ref.example_networks(G, D)
