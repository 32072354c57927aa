"""Architectures: shapes/ranges per resolution, registry errors, DCGAN init, spectral norm, projection head."""

from __future__ import annotations

import pytest
import torch

from ganops.models import build_D, build_G
from ganops.models.layers import resolution_plan


@pytest.mark.parametrize("resolution,expected", [(8, (4, 1)), (16, (4, 2)), (28, (7, 2)), (32, (4, 3)),
                                                 (64, (4, 4)), (12, (6, 1))])
def test_resolution_plan(resolution, expected):
    base, n = resolution_plan(resolution)
    assert (base, n) == expected and base * 2**n == resolution


@pytest.mark.parametrize("resolution", [4, 7, 27])
def test_resolution_plan_rejects(resolution):
    with pytest.raises(ValueError, match=f"resolution {resolution} px is not supported"):
        resolution_plan(resolution)


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("resolution,channels,num_classes", [(8, 1, 0), (28, 1, 3), (32, 3, 0), (16, 3, 2)])
def test_shapes_and_range(arch, resolution, channels, num_classes):
    torch.manual_seed(0)
    G = build_G(arch, z_dim=6, ngf=4, resolution=resolution, channels=channels, num_classes=num_classes)
    D = build_D(arch, ndf=4, resolution=resolution, channels=channels, num_classes=num_classes)
    c = torch.arange(3) % num_classes if num_classes else None
    x = G(torch.randn(3, 6), c)
    assert x.shape == (3, channels, resolution, resolution) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    logits = D(x, c)
    assert logits.shape == (3,) and logits.dtype == torch.float32


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown architecture 'stylegan'; valid: dcgan, r3gan, resnet"):
        build_G("stylegan", z_dim=4)
    with pytest.raises(ValueError, match="valid: dcgan, r3gan, resnet"):
        build_D("nope")


def test_dcgan_layout_and_init():
    torch.manual_seed(0)
    G = build_G("dcgan", z_dim=100, ngf=64, resolution=28, channels=1)
    convs = [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    # 28 px: 1x1 -> 7x7 (kernel 7) -> 14 -> 28; widths 128, 64, then 1 channel.
    assert [(m.in_channels, m.out_channels, m.kernel_size[0]) for m in convs] == [(100, 128, 7), (128, 64, 4),
                                                                                   (64, 1, 4)]
    w = convs[0].weight.detach()  # 627k samples of N(0, 0.02)
    assert abs(float(w.std()) - 0.02) < 2e-4 and abs(float(w.mean())) < 2e-4
    D = build_D("dcgan", ndf=64, resolution=28, channels=1)
    mods = list(D.features)
    # No BN after the first conv (Radford et al.), BN after the second.
    assert isinstance(mods[1], torch.nn.LeakyReLU) and mods[1].negative_slope == 0.2
    assert isinstance(mods[3], torch.nn.BatchNorm2d)


def test_labels_are_checked():
    G = build_G("dcgan", z_dim=4, ngf=4, resolution=8, channels=1, num_classes=3)
    with pytest.raises(ValueError, match="needs int64 labels"):
        G(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2, got 0\.\.3"):
        G(torch.randn(2, 4), torch.tensor([0, 3]))
    G0 = build_G("dcgan", z_dim=4, ngf=4, resolution=8, channels=1)
    with pytest.raises(ValueError, match="unconditional"):
        G0(torch.randn(2, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_spectral_norm_bounds_every_layer(arch):
    torch.manual_seed(0)
    D = build_D(arch, ndf=4, resolution=8, channels=1, spectral_norm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    x = torch.randn(4, 1, 8, 8)
    for _ in range(30):  # power iteration converges over forward passes in train mode
        D(x)
    D.eval()
    sn_layers = [m for m in D.modules() if hasattr(m, "parametrizations")]
    assert len(sn_layers) >= 2
    for m in sn_layers:
        w = m.weight.detach()
        sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
        assert abs(float(sigma) - 1.0) < 1e-2


def test_projection_head_matches_independent_computation():
    torch.manual_seed(0)
    D = build_D("dcgan", ndf=4, resolution=8, channels=1, num_classes=3).eval()
    x = torch.randn(2, 1, 8, 8)
    phi = D.features(x).flatten(1)
    for k in range(3):
        c = torch.full((2,), k)
        expected = phi @ D.head.linear.weight[0] + D.head.linear.bias + (phi * D.head.embed.weight[k]).sum(1)
        torch.testing.assert_close(D(x, c), expected)


def test_conditional_G_uses_labels():
    torch.manual_seed(0)
    G = build_G("resnet", z_dim=4, ngf=4, resolution=8, channels=1, num_classes=2).eval()
    with torch.no_grad():
        G.blocks[0].bn1.beta.weight[1].fill_(1.0)  # make class 1's shift differ
    z = torch.randn(2, 4)
    assert not torch.allclose(G(z, torch.tensor([0, 0])), G(z, torch.tensor([1, 1])))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("num_classes,sn", [(0, False), (3, False), (3, True)], ids=["plain", "cond", "cond-sn"])
def test_dcgan_fast_paths_match_stock_layers(memory_format, num_classes, sn):
    """G's first layer as a matmul and the head reading channels_last maps in NHWC order: same outputs and gradients
    as the stock layers (ConvTranspose2d on a 1x1 input; NCHW flatten), in both memory formats."""
    torch.manual_seed(0)
    G = build_G("dcgan", z_dim=6, ngf=4, resolution=16, channels=2, num_classes=num_classes)
    D = build_D("dcgan", ndf=4, resolution=16, channels=2, num_classes=num_classes, spectral_norm=sn)
    G, D = G.to(memory_format=memory_format).eval(), D.to(memory_format=memory_format).eval()
    z, c = torch.randn(5, 6), (torch.tensor([0, 1, 2, 1, 0]) if num_classes else None)
    zc = torch.cat([z, G.embed(c)], 1) if num_classes else z

    def grads(loss, module):
        return [g.clone() for g in torch.autograd.grad(loss, list(module.parameters()))]

    fast, stock = G(z, c), G.net(zc[:, :, None, None])  # G.net[0] = the ConvTranspose2d module itself
    torch.testing.assert_close(fast, stock, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads(fast.square().sum(), G), grads(stock.square().sum(), G), rtol=1e-4, atol=1e-6)
    x = torch.randn(5, 2, 16, 16).contiguous(memory_format=memory_format)
    h = D.features(x)
    assert h.is_contiguous(memory_format=memory_format)
    fast_D, stock_D = D(x, c), D.head(h.flatten(1), c)  # flatten(1) copies a channels_last map into NCHW order
    torch.testing.assert_close(fast_D, stock_D, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads(fast_D.sum(), D), grads(stock_D.sum(), D), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_dcgan_refuses_misshapen_inputs(memory_format, num_classes):
    """G's matmul first layer and the D head's NHWC read take any tensor whose size fits: a 1-D z (an IndexError
    under the stock layers) passed as a batch of one, and a wrong z_dim or image size failed deep inside with a
    matmul/view message. Each is now a ValueError naming the expected shape."""
    G = build_G("dcgan", z_dim=7, ngf=3, resolution=16, channels=1, num_classes=num_classes)
    D = build_D("dcgan", ndf=3, resolution=16, channels=1, num_classes=num_classes)
    G, D = G.to(memory_format=memory_format).eval(), D.to(memory_format=memory_format).eval()
    c2 = torch.tensor([0, 1]) if num_classes else None
    for z in (torch.randn(7), torch.randn(2, 6), torch.randn(2, 7, 1, 1)):
        with pytest.raises(ValueError, match=r"z must have shape \(N, 7\)"):
            G(z, c2 if z.dim() > 1 else (c2[:1] if num_classes else None))
    for x in (torch.randn(2, 1, 32, 32), torch.randn(2, 1, 8, 8), torch.randn(2, 3, 16, 16)):
        with pytest.raises(ValueError, match=r"images must have shape \(N, 1, 16, 16\)"):
            D(x.contiguous(memory_format=memory_format), c2)
    from ganops.models.dcgan import project_z
    with pytest.raises(ValueError, match=r"z must have shape \(N, 5\)"):
        project_z(torch.randn(5), torch.randn(5, 2, 4, 4))
    with pytest.raises(ValueError, match="features"):
        D.head(torch.randn(2, 3, 4, 4).contiguous(memory_format=memory_format), c2)
    assert G(torch.randn(2, 7), c2).shape == (2, 1, 16, 16) and D(torch.randn(2, 1, 16, 16), c2).shape == (2,)
