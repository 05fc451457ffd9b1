r"""Neural diffusion models (Bartosh, Vetrov, Naesseth, ICML 2024): a learned transformation of the data inside the
forward process, its continuous-time bound (NELBO) and the generative SDE / ODE.

**Forward process.** With VP's ``alpha_t = exp(-int_0^t beta / 2)``, ``sigma_t^2 = 1 - alpha_t^2`` and a learned
``F_phi(x, t)`` with ``F_phi(x, 0) = x``, the marginals are ``q_phi(z_t | x) = N(mu_x(t), sigma_t^2 I)``,
``mu_x(t) = alpha_t F_phi(x, t)`` (the paper's forward marginal). A process with these marginals and VP's
diffusion ``g_t^2 = beta(t)`` is

.. math::  dz = f_x(z, t)\, dt + g_t\, dW, \qquad
           f_x(z, t) = \dot\mu_x(t) + \Big(\frac{\dot\sigma_t}{\sigma_t} - \frac{g_t^2}{2\sigma_t^2}\Big)(z - \mu_x(t)),

(the mean of ``z`` moves with ``mu``, and ``d sigma^2/dt = 2 (sigma'/sigma - g^2 / 2 sigma^2) sigma^2 + g^2``),
where ``mu_dot_x = alpha_dot F(x, t) + alpha d_t F(x, t)``, the time derivative at fixed ``x`` (a forward-mode
JVP). Its time reversal given ``x`` has drift ``f_x - g^2 grad log q(z | x)``, ``grad log q = -(z - mu_x) / sigma^2``.

**Generative model.** The same reversal with ``x`` replaced by the prediction ``x_hat = x_hat_theta(z_t, t)``: in
noising time ``t`` running down,

.. math::  dz = \big[f_{\hat x}(z, t) - \tfrac{1 + \eta^2}{2} g_t^2 \nabla \log q(z | \hat x)\big] dt
           + \eta\, g_t\, d\bar W, \qquad \hat x = \hat x_\theta(z, t) \ \text{held fixed in } f_{\hat x},

``eta = 1`` the SDE whose bound is trained, ``eta = 0`` the ODE (it transports ``N(mu_x(T), sigma_T^2)`` along
``mu_x(t) + sigma_t eps`` exactly when ``x_hat`` is exact for point data: ``dz/dt = mu_dot + sigma_dot eps``).
Started from ``N(0, I)`` at ``T``, it ends at ``t_min`` with the decoder ``p(x | z) = N(x_hat_theta(z, t_min),
sigma^2/alpha^2 I)``.

**NELBO** (derived here; the paper's continuous-time objective is this bound). Girsanov between the reversed
forward process given ``x`` and the generative SDE (same diffusion ``g``), plus the data-processing bound for the
endpoints:

.. math::  -\log p(x) \le E[-\log p(x | z_{t_{min}})] + \mathrm{KL}(q(z_T | x) \,\|\, N(0, I))
           + \int_{t_{min}}^T \frac{1}{2 g_t^2} E_{q(z_t|x)} |r|^2 dt,

.. math::  r = (\dot\mu_x - \dot\mu_{\hat x}) - \Big(\frac{\dot\sigma_t}{\sigma_t} + \frac{g_t^2}{2\sigma_t^2}\Big)
               (\mu_x - \mu_{\hat x}), \qquad \frac{\dot\sigma}{\sigma} + \frac{g^2}{2\sigma^2}
               = \frac{\beta (1 + \alpha^2)}{2 \sigma^2} \ \text{for VP}.

With ``F`` the identity, ``r = -(alpha beta / sigma^2)(x - x_hat)`` and the integrand is ``-SNR'(t) |x - x_hat|^2 / 2``,
``SNR = alpha^2 / sigma^2``: the continuous-time bound of variational diffusion models (Kingma et al. 2021,
eq. 17), and term by term the bound of :mod:`.likelihood` for VP with ``s = -(z - alpha x_hat) / sigma^2``.

**Parameterisation** (the paper's exact form was not available to us): ``F_phi(x, t) = x + (t / T) G_phi(x, t)``,
``F(x, 0) = x`` exactly; with the default :class:`~sde_control.controls.ControlMLP` (last layer zero) it starts as
the identity, i.e. as plain VP.

The time of the diffusion term is drawn from :class:`.likelihood.TimeProposal` on VP (``p ∝ beta / sigma^2``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from sde_control.controls import ControlMLP
from sde_control.integrate import solve
from sde_control.sdes import VP
from sde_control.training import Trainer

from .likelihood import TimeProposal
from .model import GenerativeModel
from .sampling import CountedScore, remember_latest, solve_ode_adaptive


class NeuralTransform(nn.Module):
    """``F_phi(x, t) = x + (t / T) G_phi(x, t)`` (module docstring); ``G`` defaults to a zero-initialised MLP."""

    def __init__(self, dim: int, network: nn.Module | None = None, T: float = 1.0, width: int = 128, depth: int = 4):
        super().__init__()
        self.network = ControlMLP(dim, width, depth) if network is None else network
        self.T = float(T)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return x + (t / self.T)[:, None] * self.network(x, t)


def transform_with_time_derivative(transform: nn.Module, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(F(x, t), d/dt F(x, t))`` at fixed ``x`` by one forward-mode JVP (``t`` of shape (n,)); differentiable in
    the transform's parameters and in ``x``."""
    t = t.to(x.dtype).expand(x.shape[0]).contiguous()  # one memory location per row: the JVP writes tangents
    return torch.func.jvp(lambda tt: transform(x, tt), (t,), (torch.ones_like(t),))


class _VPCoefficients:
    """``alpha, d alpha/dt, sigma^2, beta`` of VP at times ``t`` (n,), as columns (n, 1) in ``dtype``."""

    def __init__(self, vp: VP, t: Tensor, dtype: torch.dtype):
        t = t.double()
        alpha, var = vp.transition(torch.zeros_like(t), t)
        beta = vp.beta(t)
        self.alpha, self.var, self.beta = (v.to(dtype)[:, None] for v in (alpha, var, beta))
        self.alpha_dot = -0.5 * self.beta * self.alpha

    def mean_rate(self, F: Tensor, F_dot: Tensor) -> Tensor:
        """``d/dt (alpha F) = alpha_dot F + alpha F_dot``."""
        return self.alpha_dot * F + self.alpha * F_dot

    @property
    def contraction(self) -> Tensor:
        """``sigma_dot / sigma + g^2 / (2 sigma^2) = beta (1 + alpha^2) / (2 sigma^2)``."""
        return self.beta * (1 + self.alpha**2) / (2 * self.var)


def _check(vp: VP, x: Tensor, t_min: float) -> None:
    if not isinstance(vp, VP):
        raise TypeError(f"NDM's forward process is VP's alpha_t, sigma_t; got {type(vp).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be (n, d), got shape {tuple(x.shape)}")
    if not 0 < t_min < vp.T:
        raise ValueError(f"t_min must lie in (0, T = {vp.T}), got {t_min}")


def diffusion_integrand(transform: nn.Module, denoiser: nn.Module, vp: VP, x: Tensor, t: Tensor,
                        eps: Tensor) -> Tensor:
    r"""``|r|^2 / (2 g_t^2)`` (n,) at ``z_t = alpha_t F(x, t) + sigma_t eps`` (module docstring)."""
    c = _VPCoefficients(vp, t, x.dtype)
    F_x, F_x_dot = transform_with_time_derivative(transform, x, t.to(x.dtype))
    z = c.alpha * F_x + c.var.sqrt() * eps
    x_hat = denoiser(z, t.to(x.dtype))
    F_hat, F_hat_dot = transform_with_time_derivative(transform, x_hat, t.to(x.dtype))
    r = c.mean_rate(F_x - F_hat, F_x_dot - F_hat_dot) - c.contraction * c.alpha * (F_x - F_hat)
    return r.square().sum(-1) / (2 * c.beta[:, 0])


def reconstruction_log_likelihood(transform: nn.Module, denoiser: nn.Module, vp: VP, x: Tensor, t_min: float,
                                  eps: Tensor) -> Tensor:
    """``log N(x; x_hat(z, t_min), sigma^2 / alpha^2 I)`` (n,) at ``z = alpha F(x, t_min) + sigma eps``."""
    t = torch.full((x.shape[0],), float(t_min), dtype=torch.float64, device=x.device)
    c = _VPCoefficients(vp, t, x.dtype)
    z = c.alpha * transform(x, t.to(x.dtype)) + c.var.sqrt() * eps
    variance = (c.var / c.alpha**2)[:, 0]
    error = (x - denoiser(z, t.to(x.dtype))).square().sum(-1)
    return -0.5 * x.shape[1] * torch.log(2 * math.pi * variance) - error / (2 * variance)


def prior_kl(transform: nn.Module, vp: VP, x: Tensor) -> Tensor:
    """``KL(N(alpha_T F(x, T), sigma_T^2 I) || N(0, I))`` (n,)."""
    T = torch.full((x.shape[0],), vp.T, dtype=torch.float64, device=x.device)
    c = _VPCoefficients(vp, T, x.dtype)
    mean = c.alpha * transform(x, T.to(x.dtype))
    d, var = x.shape[1], c.var[:, 0]
    return 0.5 * (d * var + mean.square().sum(-1) - d - d * torch.log(var))


def negative_elbo(transform: nn.Module, denoiser: nn.Module, vp: VP, x: Tensor, t_min: float = 1e-3,
                  proposal: TimeProposal | None = None) -> Tensor:
    """One unbiased estimate per sample (n,) of the NELBO in nats: reconstruction + prior + the diffusion integrand
    at ``t ~ p`` over ``p(t)``; differentiable in both networks (the joint training objective of ``F_phi`` and
    ``x_hat_theta``)."""
    _check(vp, x, t_min)
    proposal = TimeProposal(vp, t_min) if proposal is None else proposal
    t = proposal.sample(x.shape[0]).to(x.device)
    diffusion = diffusion_integrand(transform, denoiser, vp, x, t, torch.randn_like(x))
    reconstruction = reconstruction_log_likelihood(transform, denoiser, vp, x, t_min, torch.randn_like(x))
    return -reconstruction + prior_kl(transform, vp, x) + diffusion / proposal.density(t).to(diffusion)


def reverse_drift(transform: nn.Module, denoiser: nn.Module, vp: VP, z: Tensor, t: Tensor, eta: float) -> Tensor:
    r"""The generative drift in noising time, ``f_{x_hat}(z, t) - (1 + eta^2) g^2 grad log q(z | x_hat) / 2`` (n, d),
    ``x_hat = x_hat_theta(z, t)`` (``t`` 0-dim or (n,)); integrate it with ``t`` decreasing (module docstring)."""
    t = torch.as_tensor(t, dtype=torch.float64, device=z.device).expand(z.shape[0])
    c = _VPCoefficients(vp, t, z.dtype)
    x_hat = denoiser(z, t.to(z.dtype))
    F_hat, F_hat_dot = transform_with_time_derivative(transform, x_hat, t.to(z.dtype))
    residual = z - c.alpha * F_hat
    sigma_dot_over_sigma = c.beta * c.alpha**2 / (2 * c.var)  # sigma sigma_dot = -alpha alpha_dot
    forward = c.mean_rate(F_hat, F_hat_dot) + (sigma_dot_over_sigma - c.beta / (2 * c.var)) * residual
    return forward + 0.5 * (1 + eta**2) * c.beta * residual / c.var


@torch.no_grad()
def sample(transform: nn.Module, denoiser: Callable[[Tensor, Tensor], Tensor], vp: VP, z_T: Tensor, steps: int, *,
           eta: float = 0.0, t_min: float = 1e-3, solver: str = "euler", seed: int | None = None,
           times: Tensor | None = None) -> Tensor:
    """Paths (steps + 1, n, d) of the generative ODE (``eta = 0``) or SDE (``eta > 0``) from ``z_T`` at ``T`` to
    ``t_min`` on ``times`` (decreasing noising times; default the uniform grid), by the core's solver in generation
    time ``s = T - t``; the path's last state is the sample (``x_hat_theta(z_{t_min}, t_min)``, the decoder's mean,
    differs from it by ``O(sigma_{t_min})``)."""
    _check(vp, z_T, t_min)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    times = torch.linspace(vp.T, t_min, steps + 1, dtype=torch.float64) if times is None else times.double()
    if times.numel() != steps + 1:
        raise ValueError(f"times must have steps + 1 = {steps + 1} entries, got {times.numel()}")
    g = vp.beta(times).sqrt()

    @remember_latest
    def drift(z: Tensor, k: int) -> Tensor:
        return -reverse_drift(transform, denoiser, vp, z, times[k], eta)

    diffusion = None if eta == 0 else (lambda k, xi: eta * float(g[k]) * xi)
    return solve(drift, z_T, vp.T - times, diffusion=diffusion, method=solver, seed=seed)


class NoisePredictionDenoiser(nn.Module):
    r"""``x_hat(z, t) = (z - sigma_t eps_hat(z, t)) / alpha_t``: the data prediction of a noise-prediction network on
    VP's marginals (with ``F`` the identity this makes :class:`NDM` the VP score model with ``s = -eps_hat / sigma``,
    network for network)."""

    def __init__(self, network: nn.Module, vp: VP):
        super().__init__()
        self.network, self.vp = network, vp

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=z.device).expand(z.shape[0])
        alpha, var = self.vp.transition(torch.zeros_like(t, dtype=torch.float64), t.double())
        return (z - var.sqrt().to(z.dtype)[:, None] * self.network(z, t.to(z.dtype))) / alpha.to(z.dtype)[:, None]


class NDM(GenerativeModel):
    """A neural diffusion model (module docstring): the transform ``F_phi`` and the data prediction ``x_hat_theta``
    trained jointly on the NELBO, generated by the reverse SDE (``method="em"``) or the ODE (``"ode"``, also with
    ``solver="rk45"``); gDDIM does not apply (the forward process is not linear in the data).

    Args:
        dim: data dimension.
        beta_min, beta_max, T: VP's schedule.
        network: the noise-prediction network behind ``x_hat`` (:class:`NoisePredictionDenoiser`); default a
            :class:`~sde_control.controls.ControlMLP` of ``width`` and ``depth``.
        transform_network: ``G_phi`` of :class:`NeuralTransform`; default the same MLP, zero-initialised (so training
            starts from plain VP).
        t_min, ema_decay: as :class:`~sde_control.generative.ScoreModel`'s.
    """

    sampling_methods = ("em", "ode")

    def __init__(self, dim: int, *, beta_min: float = 0.1, beta_max: float = 10.0, T: float = 1.0,
                 network: nn.Module | None = None, transform_network: nn.Module | None = None, width: int = 128,
                 depth: int = 4, t_min: float = 1e-3, ema_decay: float | None = 0.99):
        self.vp = VP(beta_min, beta_max, T)
        network = ControlMLP(dim, width, depth) if network is None else network
        module = nn.ModuleDict({"transform": NeuralTransform(dim, transform_network, T, width, depth),
                                "denoiser": NoisePredictionDenoiser(network, self.vp)})
        self._init_model(dim, t_min, T, Trainer(module, ema_decay=ema_decay))
        self.proposal = TimeProposal(self.vp, self.t_min)

    @property
    def transform(self) -> NeuralTransform:
        """``F_phi`` of the averaged weights."""
        return self.trainer.averaged["transform"]

    @property
    def denoiser(self) -> NoisePredictionDenoiser:
        """``x_hat_theta`` of the averaged weights."""
        return self.trainer.averaged["denoiser"]

    def loss(self, x0: Tensor, condition: Tensor | None = None, **options: Any) -> Tensor:
        """The mean NELBO on the batch in nats per dimension, for the networks being trained."""
        if condition is not None or options:
            raise ValueError("NDM trains on its NELBO without conditions or options")
        live = self.trainer.module
        bound = negative_elbo(live["transform"], live["denoiser"], self.vp, x0, self.t_min, self.proposal)
        return bound.mean() / self.dim

    def negative_elbo(self, y: Tensor) -> Tensor:
        return negative_elbo(self.transform, self.denoiser, self.vp, y, self.t_min, self.proposal)

    def _prior(self, n: int, generator: torch.Generator | None) -> Tensor:
        return torch.randn(n, self.dim, generator=generator, device=self.device)

    def _generate(self, start: Tensor, times: Tensor, method: str, options: dict[str, Any], seed: int | None,
                  generator: torch.Generator | None, condition: Tensor | None) -> tuple[Tensor, int]:
        if condition is not None:
            raise ValueError("NDM is not conditional: sample without condition")
        denoiser = CountedScore(self.denoiser)
        eta = 1.0 if method == "em" else 0.0
        if options["solver"] == "rk45":
            def velocity(z: Tensor, t: Tensor) -> Tensor:
                return reverse_drift(self.transform, denoiser, self.vp, z, t, 0.0)

            paths = solve_ode_adaptive(velocity, start, times, options["rtol"], options["atol"])
        else:
            paths = sample(self.transform, denoiser, self.vp, start, times.numel() - 1, eta=eta, t_min=self.t_min,
                           solver=options["solver"], seed=seed, times=times)
        return paths, denoiser.calls
