"""Loss registry: known values, gradient directions; R1 / gradient penalty against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from ganops.losses import LOSSES, get_loss, gradient_penalty, r1_penalty


def test_registry_names_and_unknown():
    assert set(LOSSES) == {"non_saturating", "minimax", "hinge", "wgan_gp", "lsgan", "rpgan"}
    with pytest.raises(ValueError, match=r"unknown loss 'wgan'; valid: hinge, lsgan, minimax, non_saturating, rpgan, wgan_gp"):
        get_loss("wgan")


def test_logistic_losses_known_values():
    zero = torch.zeros(4)
    ns, mm = get_loss("non_saturating"), get_loss("minimax")
    assert float(ns.d_loss(zero, zero)) == pytest.approx(2 * math.log(2))
    assert float(ns.g_loss(zero)) == pytest.approx(math.log(2))
    assert float(mm.g_loss(zero)) == pytest.approx(-math.log(2))
    f = torch.tensor([-3.0, 0.5, 2.0])
    # Against the textbook forms with sigmoid probabilities.
    assert float(mm.g_loss(f)) == pytest.approx(float(torch.log(1 - torch.sigmoid(f)).mean()), rel=1e-6)
    assert float(ns.g_loss(f)) == pytest.approx(float(-torch.log(torch.sigmoid(f)).mean()), rel=1e-6)
    r = torch.tensor([1.0, -0.5, 4.0])
    expected_d = -(torch.log(torch.sigmoid(r)).mean() + torch.log(1 - torch.sigmoid(f)).mean())
    assert float(ns.d_loss(r, f)) == pytest.approx(float(expected_d), rel=1e-6)


def test_non_saturating_gives_stronger_G_gradient_when_D_wins():
    f = torch.tensor([-8.0], requires_grad=True)
    (g_ns,) = torch.autograd.grad(get_loss("non_saturating").g_loss(f), f)
    (g_mm,) = torch.autograd.grad(get_loss("minimax").g_loss(f), f)
    assert abs(float(g_ns)) > 0.99 and abs(float(g_mm)) < 1e-3  # the reason for the non-saturating form


def test_hinge_wgan_lsgan_known_values():
    r, f = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert float(get_loss("hinge").d_loss(r, f)) == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert float(get_loss("hinge").g_loss(f)) == pytest.approx(1.0)
    assert float(get_loss("wgan_gp").d_loss(r, f)) == pytest.approx(-1.0 - 1.25)
    assert get_loss("wgan_gp").needs_gradient_penalty and not get_loss("hinge").needs_gradient_penalty
    assert float(get_loss("lsgan").d_loss(torch.ones(3), torch.zeros(3))) == 0.0
    assert float(get_loss("lsgan").g_loss(torch.tensor([3.0]))) == pytest.approx(2.0)


class _LinearD(torch.nn.Module):
    """D(x) = <w, x>: grad_x D = w for every x."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x, c=None):
        return (x * self.w).sum(dim=(1, 2, 3))


def test_r1_equals_squared_weight_norm_for_linear_D():
    w = torch.randn(1, 3, 4, 4)
    r1 = r1_penalty(_LinearD(w), torch.randn(5, 1, 4, 4).expand(5, 3, 4, 4))
    assert float(r1.detach()) == pytest.approx(float(w.square().sum()), rel=1e-6)
    r1.backward()  # differentiable w.r.t. D's parameters (create_graph=True)


def test_r1_quadratic_D():
    class Q(torch.nn.Module):
        def forward(self, x, c=None):
            return x.square().sum(dim=(1, 2, 3))

    x = torch.randn(3, 1, 2, 2)
    assert float(r1_penalty(Q(), x).detach()) == pytest.approx(float((4 * x.square().sum(dim=(1, 2, 3))).mean()), rel=1e-6)


def test_gradient_penalty_closed_form_and_shape_check():
    w = torch.randn(1, 1, 4, 4)
    w = 3 * w / w.norm()  # ||grad|| = 3 at every interpolate -> (3 - 1)^2 = 4
    D = _LinearD(w)
    gp = gradient_penalty(D, torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert float(gp.detach()) == pytest.approx(4.0, rel=1e-5)
    gp.backward()
    assert D.w.grad is not None and float(D.w.grad.norm()) > 0
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(D, torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 4, 4))
