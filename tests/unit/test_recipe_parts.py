"""The modern recipe's parts against values computed by hand or by autograd: RpGAN, R1/R2, schedules, ADA, r3gan."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ganops.config import TrainConfig
from ganops.losses import get_loss, r1_penalty, r2_penalty
from ganops.models import build_D, build_G
from ganops.models.r3gan import stage_widths
from ganops.training.augment import AdaptiveAugment
from ganops.training.schedules import cosine, ema_halflife_nimg, ema_step_beta, step_hyper


def test_rpgan_values_by_hand():
    rpgan = get_loss("rpgan")
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.0])
    # L_D = mean softplus(fake - real) = (log(1 + e^-1.5) + log(1 + e^1)) / 2
    expected_d = (math.log1p(math.exp(-1.5)) + math.log1p(math.exp(1.0))) / 2
    assert float(rpgan.d_loss(real, fake)) == pytest.approx(expected_d, rel=1e-6)
    # L_G = mean softplus(real - fake) = (log(1 + e^1.5) + log(1 + e^-1)) / 2
    expected_g = (math.log1p(math.exp(1.5)) + math.log1p(math.exp(-1.0))) / 2
    assert float(rpgan.g_loss(fake, real)) == pytest.approx(expected_g, rel=1e-6)
    assert rpgan.uses_real_in_g and not get_loss("non_saturating").uses_real_in_g


def test_rpgan_g_loss_sends_no_gradient_to_the_real_side():
    real = torch.tensor([1.0, 2.0], requires_grad=True)
    fake = torch.tensor([0.0, 0.0], requires_grad=True)
    get_loss("rpgan").g_loss(fake, real).backward()
    assert real.grad is None and fake.grad is not None
    # d/dfake_i mean softplus(r_i - f_i) = -sigmoid(r_i - f_i) / 2
    assert torch.allclose(fake.grad, -torch.sigmoid(torch.tensor([1.0, 2.0])) / 2)


def test_rpgan_refuses_unpaired_batches():
    with pytest.raises(ValueError, match="pairs real and fake logits one to one"):
        get_loss("rpgan").d_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="needs D's logits on the real batch"):
        get_loss("rpgan").g_loss(torch.zeros(2), None)


class _Quadratic(nn.Module):
    """D(x) = sum(a * x^2) + <w, x>: grad_x D = 2 a x + w, known in closed form."""

    def __init__(self, shape):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Parameter(torch.randn(shape, generator=g))
        self.w = nn.Parameter(torch.randn(shape, generator=g))

    def forward(self, x, c=None):
        return (self.a * x * x + self.w * x).flatten(1).sum(1)


def test_r1_and_r2_match_the_closed_form_gradient():
    D = _Quadratic((1, 3, 3))
    x = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    expected = ((2 * D.a * x + D.w) ** 2).flatten(1).sum(1).mean()
    assert float(r1_penalty(D, x).detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert float(r2_penalty(D, x).detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_r2_gradient_reaches_D_not_the_fakes():
    D = _Quadratic((1, 2, 2))
    fakes = torch.randn(3, 1, 2, 2, requires_grad=True)
    r2_penalty(D, fakes).backward()
    assert fakes.grad is None
    # d/dw mean ||2 a x + w||^2 = mean over images of 2 (2 a x + w)
    expected = (2 * (2 * D.a.detach() * fakes.detach() + D.w.detach())).mean(0)
    assert torch.allclose(D.w.grad, expected, atol=1e-6)


def test_cosine_schedule_end_points_and_midpoint():
    assert cosine(2e-4, 5e-5, 0, 100) == pytest.approx(2e-4)
    assert cosine(2e-4, 5e-5, 50_000, 100) == pytest.approx((2e-4 + 5e-5) / 2)
    assert cosine(2e-4, 5e-5, 100_000, 100) == pytest.approx(5e-5)
    assert cosine(2e-4, 5e-5, 900_000, 100) == pytest.approx(5e-5)  # held after the horizon
    assert cosine(2e-4, None, 50_000, 100) == 2e-4 and cosine(2e-4, 5e-5, 50_000, 0) == 2e-4


def test_ema_rampup_values():
    # StyleGAN2-ADA: half-life = min(ema_kimg * 1000, cur_nimg * rampup)
    assert ema_halflife_nimg(10.0, 0, 0.05) == 0.0
    assert ema_halflife_nimg(10.0, 100_000, 0.05) == pytest.approx(5000.0)
    assert ema_halflife_nimg(10.0, 1_000_000, 0.05) == pytest.approx(10_000.0)  # capped at 10 kimg
    assert ema_halflife_nimg(10.0, 100_000, None) == 10_000.0
    assert ema_step_beta(64, 10.0, 0, 0.05) == 0.0  # G_ema starts as a copy of G
    assert ema_step_beta(64, 10.0, 100_000, 0.05) == pytest.approx(0.5 ** (64 / 5000))
    assert ema_step_beta(64, 10.0, 100_000, None) == pytest.approx(0.5 ** (64 / 10_000))


def test_step_hyper_reads_every_schedule():
    cfg = TrainConfig(lr_g=2e-4, lr_d=4e-4, lr_g_end=1e-4, lr_d_end=1e-4, betas_g=(0.0, 0.9), betas_d=(0.0, 0.9),
                      beta2_end=0.99, r1_gamma=1.0, r1_gamma_end=0.1, r2_gamma=1.0, r2_gamma_end=0.1,
                      ema_halflife_kimg=1.0, ema_halflife_kimg_end=3.0, schedule_kimg=10.0, batch_size=32,
                      ema_rampup=None)
    h0, h_end = step_hyper(cfg, 0), step_hyper(cfg, 10_000)
    start = (h0.lr_g, h0.lr_d, h0.beta2_g, h0.r1_gamma, h0.ema_halflife_kimg)
    assert start == pytest.approx((2e-4, 4e-4, 0.9, 1.0, 1.0))
    assert (h_end.lr_g, h_end.lr_d, h_end.beta2_d, h_end.r2_gamma) == pytest.approx((1e-4, 1e-4, 0.99, 0.1))
    assert h_end.ema_beta == pytest.approx(0.5 ** (32 / 3000))


def _ada(**kw) -> AdaptiveAugment:
    return AdaptiveAugment("translation,cutout", target=0.6, speed_kimg=1.0, interval=2, **kw)


def test_ada_p_rises_when_D_is_overconfident_on_reals_and_falls_otherwise():
    ada = _ada()
    for _ in range(2):
        ada.accumulate(torch.ones(8))  # r_t = 1 > 0.6
    assert ada.update(batch_size=8)
    assert ada.p == pytest.approx(8 * 2 / 1000) and ada.last_rt == 1.0
    ada = _ada(p=0.5)
    for _ in range(2):
        ada.accumulate(-torch.ones(8))  # r_t = -1 < 0.6
    ada.update(batch_size=8)
    assert ada.p == pytest.approx(0.5 - 8 * 2 / 1000)


def test_ada_updates_only_every_interval_and_clips_to_unit_range():
    ada = _ada()
    ada.accumulate(-torch.ones(4))
    assert not ada.update(batch_size=4) and ada.p == 0.0  # one step of an interval of 2
    ada.accumulate(-torch.ones(4))
    assert ada.update(batch_size=4) and ada.p == 0.0  # clipped at 0
    with pytest.raises(ValueError, match="ADA needs 0 < target < 1"):
        AdaptiveAugment("translation", target=1.5)


def test_ada_applies_each_op_with_probability_p():
    x = torch.ones(2000, 1, 8, 8)
    assert torch.equal(_ada(p=0.0)(x), x)
    torch.manual_seed(0)
    out = AdaptiveAugment("cutout", p=0.3)(x)
    changed = (out != x).flatten(1).any(1).float().mean()
    assert 0.25 < float(changed) < 0.35


def test_ada_state_round_trip():
    ada = _ada(p=0.25)
    ada.accumulate(torch.tensor([1.0, -1.0, 1.0]))
    other = _ada()
    other.load_state_dict(ada.state_dict())
    assert other.p == 0.25 and other.state_dict() == ada.state_dict()


@pytest.mark.parametrize("resolution", [28, 8, 16, 32, 64, 128, 256])
@pytest.mark.parametrize("channels,num_classes", [(1, 0), (3, 3)])
def test_r3gan_shapes_at_every_supported_resolution(resolution, channels, num_classes):
    torch.manual_seed(0)
    kw = dict(resolution=resolution, channels=channels, num_classes=num_classes, blocks_per_stage=1, expansion=2,
              group_size=4)
    G = build_G("r3gan", z_dim=6, ngf=4, **kw)
    D = build_D("r3gan", ndf=4, **kw)
    c = torch.arange(2) % num_classes if num_classes else None
    x = G(torch.randn(2, 6), c)
    assert x.shape == (2, channels, resolution, resolution) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert D(x, c).shape == (2,)


def test_r3gan_blocks_start_as_identity_and_widths_follow_the_stages():
    assert stage_widths(28, 16) == [64, 32, 16] and stage_widths(32, 16, max_width=48) == [48, 48, 32, 16]
    D = build_D("r3gan", ndf=8, resolution=16, channels=1, num_classes=0, group_size=4)
    block = D.stages[0][0]
    h = torch.randn(2, 8, 16, 16)
    assert torch.equal(block(h), h)  # Fixup: the residual branch's last layer starts at zero
    with pytest.raises(ValueError, match="no spectral norm"):
        build_D("r3gan", ndf=8, resolution=16, channels=1, num_classes=0, spectral_norm=True)


@pytest.mark.parametrize("state,message", [
    ({"p": float("nan"), "sign_sum": 0.0, "count": 0, "steps": 0, "last_rt": None}, "p must lie in"),
    ({"p": 5.0, "sign_sum": 0.0, "count": 0, "steps": 0, "last_rt": None}, "p must lie in"),
    ({"p": 0.1, "sign_sum": 9.0, "count": 0, "steps": 2, "last_rt": None}, "sign_sum"),
    ({"p": "abc", "sign_sum": 0.0, "count": 0, "steps": 0, "last_rt": None}, "invalid ADA state"),
    ({"sign_sum": 0.0, "count": 0, "steps": 0, "last_rt": None}, "KeyError"),
])
def test_ada_refuses_a_malformed_state_and_keeps_its_own(state, message):
    ada = _ada(p=0.25)
    with pytest.raises(ValueError, match=message):
        ada.load_state_dict(state)
    assert ada.p == 0.25


@pytest.mark.parametrize("overrides,message", [
    (dict(lr_g_end=1e-5), "train.lr_g_end set but train.schedule_kimg is 0"),
    (dict(ema_halflife_kimg=0.0, ema_rampup=0.05), "train.ema_rampup caps a G_ema half-life"),
    (dict(ada_target=0.6, ada_policy=""), "train.ada_policy is empty"),
])
def test_config_refuses_settings_that_would_silently_do_nothing(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_ema_update_with_a_tensor_decay_equals_the_float_one():
    from ganops.training.ema import update_ema

    torch.manual_seed(0)
    G, a, b = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    for beta in (0.3, 0.99):
        update_ema(a, G, beta)
        update_ema(b, G, beta, weight=torch.tensor(1.0 - beta))
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(b.weight, G.weight)  # between its start and G
    update_ema(b, G, 0.0, weight=torch.tensor(1.0))
    assert torch.equal(b.weight, G.weight) and torch.equal(b.bias, G.bias)  # decay 0: an exact copy


def test_only_the_ema_ramp_leaves_a_step_capturable_as_a_cuda_graph():
    from ganops.training.step import graph_capturable, has_schedules

    ramp = TrainConfig(ema_halflife_kimg=10.0, ema_rampup=0.05)
    assert has_schedules(ramp) and graph_capturable(ramp)
    lr = TrainConfig(schedule_kimg=100.0, lr_g_end=1e-5)
    assert has_schedules(lr) and not graph_capturable(lr)
