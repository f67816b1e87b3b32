"""Variational autoencoder of Kingma & Welling, *Auto-Encoding Variational Bayes* (2013).

The paper's model (appendix C): a Gaussian MLP recognition model q(z|x) with one hidden
layer of tanh units giving a mean and a log-variance, a standard normal prior p(z), and an
MLP decoder p(x|z) that is Bernoulli for binary data (MNIST) or Gaussian for continuous data
(Frey Face, means squashed to (0, 1) by a sigmoid). Training maximises the SGVB estimate of
the lower bound with the KL term in closed form (the paper's eq. 10) and one reparameterised
sample z = mu + sigma * eps per datapoint.

Shapes: B batch, D = prod(image_shape) pixels, H hidden units, Z latent size, K samples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Likelihood = Literal["bernoulli", "gaussian"]
LOG_2PI = math.log(2 * math.pi)


@dataclass
class VAEConfig:
    """Architecture of one VAE; stored verbatim in the model card."""

    image_shape: tuple[int, int] = (28, 28)  # (H, W) of the grey input image
    hidden: int = 500  # paper: 500 for MNIST, 200 for Frey Face
    latent: int = 20  # paper sweeps 3, 5, 10, 20, 200
    likelihood: Likelihood = "bernoulli"
    # Deeper MLP (same interface) for better likelihoods; 1 hidden layer is the paper's model.
    depth: int = 1
    # Floor on the Gaussian decoder's log-variance, keeps the likelihood bounded on data
    # with near-constant pixels (Frey Face); ignored for Bernoulli.
    min_log_var: float = -8.0
    # "default": PyTorch's Linear init (uniform, scaled by fan-in); "paper": every parameter
    # drawn from N(0, 0.01^2), as in the paper's experiments (section 5).
    init: Literal["default", "paper"] = "default"

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(s) for s in self.image_shape)  # type: ignore[assignment]
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(
                f"likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}"
            )
        if self.hidden < 1 or self.latent < 1 or self.depth < 1:
            raise ValueError("hidden, latent and depth must be positive")
        if self.init not in ("default", "paper"):
            raise ValueError(f"init must be 'default' or 'paper', got {self.init!r}")

    @property
    def input_dim(self) -> int:
        return self.image_shape[0] * self.image_shape[1]

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d


def _mlp(n_in: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.Tanh()]
    return nn.Sequential(*layers)


@dataclass
class ELBO:
    """Per-datapoint terms of the lower bound, each of shape (B,)."""

    log_px_z: Tensor  # reconstruction term  E_q[log p(x|z)], one-sample estimate
    kl: Tensor  # KL(q(z|x) || p(z)), closed form

    @property
    def elbo(self) -> Tensor:
        return self.log_px_z - self.kl


class VAE(nn.Module):
    """Gaussian encoder, Bernoulli or Gaussian decoder, standard normal prior."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        d, h, z = config.input_dim, config.hidden, config.latent
        self.encoder = _mlp(d, h, config.depth)
        self.enc_mean = nn.Linear(h, z)
        self.enc_log_var = nn.Linear(h, z)
        self.decoder = _mlp(z, h, config.depth)
        self.dec_out = nn.Linear(h, d)  # Bernoulli logits, or Gaussian mean pre-sigmoid
        self.dec_log_var = nn.Linear(h, d) if config.likelihood == "gaussian" else None
        if config.init == "paper":
            for p in self.parameters():
                nn.init.normal_(p, 0.0, 0.01)

    # --- recognition model q(z|x) ---------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, D) or (B, 1, H, W) in [0, 1] -> mean (B, Z), log-variance (B, Z)."""
        h = self.encoder(x.flatten(1))
        return self.enc_mean(h), self.enc_log_var(h)

    @staticmethod
    def reparameterize(
        mean: Tensor, log_var: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """z = mean + sigma * eps, eps ~ N(0, I): differentiable in mean and log_var."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * log_var) * eps

    # --- generative model p(x|z) ----------------------------------------------------
    def decode_params(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """z (B, Z) -> Bernoulli logits (B, D), None; or Gaussian mean (B, D), log-var (B, D)."""
        h = self.decoder(z)
        out = self.dec_out(h)
        if self.dec_log_var is None:
            return out, None
        log_var = self.dec_log_var(h).clamp(min=self.config.min_log_var)
        return torch.sigmoid(out), log_var

    def decode(self, z: Tensor) -> Tensor:
        """z (B, Z) -> the decoder's mean image (B, 1, H, W) in [0, 1]."""
        out, log_var = self.decode_params(z)
        mean = torch.sigmoid(out) if log_var is None else out
        return mean.view(-1, 1, *self.config.image_shape)

    def log_px_z(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) summed over pixels: x (B, D), z (..., B, Z) -> (..., B)."""
        return log_px_given(x, *self.decode_params(z))

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw z ~ p(z) and return (z (n, Z), decoder mean images (n, 1, H, W))."""
        p = next(self.parameters())
        z = torch.randn(
            (n, self.config.latent), generator=generator, device=p.device, dtype=p.dtype
        )
        return z, self.decode(z)

    # --- objective ------------------------------------------------------------------
    def elbo_terms(self, x: Tensor, generator: torch.Generator | None = None) -> ELBO:
        """SGVB estimator (paper eq. 10): one sample per datapoint, KL in closed form."""
        x = x.flatten(1)
        mean, log_var = self.encode(x)
        z = self.reparameterize(mean, log_var, generator)
        return ELBO(log_px_z=self.log_px_z(x, z), kl=kl_standard_normal(mean, log_var))

    def forward(self, x: Tensor) -> Tensor:
        """Negative lower bound averaged over the batch: the training loss, in nats."""
        return -self.elbo_terms(x).elbo.mean()

    def log_weights(
        self, x: Tensor, mean: Tensor, log_var: Tensor, eps: Tensor
    ) -> tuple[Tensor, Tensor]:
        """At z = mean + sigma * eps: log p(x|z) and the importance log-weight
        log p(x|z) + log p(z) - log q(z|x). x (B, D), mean and log_var (B, Z) from
        `encode(x)`, eps (K, B, Z) -> (K, B) each."""
        z = mean + torch.exp(0.5 * log_var) * eps
        log_pz = -0.5 * (LOG_2PI + z**2).sum(-1)
        log_qz = -0.5 * (LOG_2PI + log_var + eps**2).sum(-1)
        log_px_z = self.log_px_z(x, z)
        return log_px_z, log_px_z + log_pz - log_qz

    @torch.no_grad()
    def importance_log_likelihood(
        self, x: Tensor, k: int = 5000, chunk: int = 500, generator: torch.Generator | None = None
    ) -> Tensor:
        """log p(x) ~ logmeanexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)], z_k ~ q(z|x).

        Returns (B,). An unbiased estimate of p(x), so a stochastic lower bound on log p(x) that
        tightens as k grows, and is >= the ELBO in expectation. `chunk` bounds memory: at most
        chunk * B decoder passes at once.
        """
        x = x.flatten(1)
        mean, log_var = self.encode(x)  # (B, Z)
        parts = []
        for start in range(0, k, chunk):
            kk = min(chunk, k - start)
            eps = torch.randn(
                (kk, *mean.shape), generator=generator, device=x.device, dtype=x.dtype
            )
            parts.append(self.log_weights(x, mean, log_var, eps)[1])  # (kk, B)
        log_w = torch.cat(parts, 0)
        return torch.logsumexp(log_w, 0) - math.log(k)

    @torch.no_grad()
    def score(self, x: Tensor, eps: Tensor, chunk: int = 500) -> tuple[Tensor, Tensor]:
        """Lower bound and importance-sampled log p(x) of x (B, D), both from the same K draws
        eps (K, B, Z) of q(z|x): (B,) each, in nats.

        The bound is the paper's eq. 10 with K samples (mean reconstruction term, KL in closed
        form); log p(x) is logmeanexp_k of the importance weights, as in
        `importance_log_likelihood`. The caller draws eps, so each row can have its own seed.
        """
        x = x.flatten(1)
        mean, log_var = self.encode(x)
        recon, log_w = [], []
        for eps_chunk in eps.split(chunk):  # at most chunk * B decoder rows at once
            r, w = self.log_weights(x, mean, log_var, eps_chunk)
            recon.append(r)
            log_w.append(w)
        elbo = torch.cat(recon).mean(0) - kl_standard_normal(mean, log_var)
        log_px = torch.logsumexp(torch.cat(log_w), 0) - math.log(eps.shape[0])
        return elbo, log_px


def log_px_given(x: Tensor, out: Tensor, log_var: Tensor | None) -> Tensor:
    """log p(x|z) from the decoder's parameters (`VAE.decode_params`), summed over pixels:
    x (B, D) broadcast against out (..., B, D) -> (..., B)."""
    x = x.flatten(1).expand_as(out)
    if log_var is None:
        return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
    return -0.5 * (LOG_2PI + log_var + (x - out) ** 2 * torch.exp(-log_var)).sum(-1)


def kl_standard_normal(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mean, diag(exp(log_var))) || N(0, I)) summed over latent dims: (B, Z) -> (B,)."""
    return -0.5 * (1 + log_var - mean**2 - torch.exp(log_var)).sum(-1)


# --- marginal inference: missing pixels and likelihood scores ----------------------------
ImputeMethod = Literal["pseudo-gibbs", "mwg"]
IMPUTE_METHODS: tuple[ImputeMethod, ...] = ("pseudo-gibbs", "mwg")
# Where the missing pixels of the chain's first state start: the middle of [0, 1].
IMPUTE_FILL = 0.5


def scoring_input(x: Tensor, likelihood: Likelihood) -> Tensor:
    """The data a likelihood is computed of: a Bernoulli model's p(x) is a probability of binary
    images, so grey levels are binarised at 0.5; a Gaussian model scores densities as given."""
    return (x >= 0.5).to(x.dtype) if likelihood == "bernoulli" else x


def _row_noise(generators: list[torch.Generator], shape: tuple[int, ...], like: Tensor) -> Tensor:
    """One standard-normal draw of `shape` per row, each from its row's generator: (B, *shape)."""
    return torch.stack(
        [torch.randn(shape, generator=g, device=like.device, dtype=like.dtype) for g in generators]
    )


def _row_uniform(generators: list[torch.Generator], shape: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.stack(
        [torch.rand(shape, generator=g, device=like.device, dtype=like.dtype) for g in generators]
    )


def _log_q(z: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(z; mean, diag(exp(log_var))) summed over latent dims: (B, Z) -> (B,)."""
    return -0.5 * (LOG_2PI + log_var + (z - mean) ** 2 * torch.exp(-log_var)).sum(-1)


@torch.no_grad()
def impute(
    model: VAE,
    x: Tensor,
    missing: Tensor,
    steps: Tensor,
    method: ImputeMethod,
    generators: list[torch.Generator],
    stats: dict[str, float] | None = None,
) -> Tensor:
    """Fill the missing pixels of x (B, D) in [0, 1] (`missing` (B, D) bool) from the model.

    Both chains start with the missing pixels at 0.5 and run one sweep per step; a sweep draws z,
    then the missing pixels x_m ~ p(x_m|z), and the observed ones stay fixed:
    - "pseudo-gibbs" (Rezende et al. 2014): z ~ q(z|x). Its stationary law is not exactly
      p(x_m|x_o), since q only approximates the posterior.
    - "mwg", Metropolis-within-Gibbs (Mattei & Frellsen 2018): q(z|x) proposes z', accepted
      with the Metropolis-Hastings ratio of p(x|z) p(z) / q(z|x), so the chain samples the
      model's true conditional p(x_m|x_o). Its burn-in (the first half) takes pseudo-Gibbs
      sweeps: from the 0.5 fill, where q is far from the posterior, an independent proposal
      is almost never accepted and the exact chain would not move.
    Row b runs `steps[b]` sweeps; its missing pixels come back as the mean of the decoder means
    over the second half of them (the first half is burn-in), an estimate of E[x_m | x_o] (for
    the Bernoulli model, pixel probabilities). Observed pixels come back unchanged. Every row
    draws its noise from its own generator, so its answer does not depend on the other rows.
    `stats`, when given, receives "acceptance": the share of mwg proposals accepted.
    """
    if method not in IMPUTE_METHODS:
        raise ValueError(f"method must be one of {IMPUTE_METHODS}, got {method!r}")
    x, missing = x.flatten(1), missing.flatten(1)
    b, d = x.shape
    steps = steps.to(x.device)
    latent = model.config.latent
    state = torch.where(missing, torch.full_like(x, IMPUTE_FILL), x)  # (B, D)
    total, count = torch.zeros_like(x), torch.zeros(b, 1, device=x.device, dtype=x.dtype)
    accepted = torch.zeros((), dtype=torch.long, device=x.device)
    proposed = torch.zeros((), dtype=torch.long, device=x.device)
    # The chain's z and its decoder parameters (logits, or Gaussian means and log-variances).
    z: Tensor | None = None
    out: Tensor = x
    out_log_var: Tensor | None = None
    for t in range(int(steps.max())):
        mean, log_var = model.encode(state)  # (B, Z), given the current fill
        proposal = mean + torch.exp(0.5 * log_var) * _row_noise(generators, (latent,), x)
        new_out, new_log_var = model.decode_params(proposal)
        if method == "mwg" and z is not None:
            accept_u = _row_uniform(generators, (), x)  # drawn before the x_m noise, every step
            log_ratio = (
                log_px_given(state, new_out, new_log_var)
                - 0.5 * (proposal**2).sum(-1)
                - _log_q(proposal, mean, log_var)
            ) - (
                log_px_given(state, out, out_log_var)
                - 0.5 * (z**2).sum(-1)
                - _log_q(z, mean, log_var)
            )
            sampling = (t >= steps // 2) & (t < steps)  # rows past burn-in, still running
            keep = ((torch.log(accept_u) >= log_ratio) & sampling)[:, None]  # (B, 1): reject z'
            accepted += (~keep[:, 0] & sampling).sum()  # tensors: no device sync per step
            proposed += sampling.sum()
            z = torch.where(keep, z, proposal)
            out = torch.where(keep, out, new_out)
            if out_log_var is not None and new_log_var is not None:
                out_log_var = torch.where(keep, out_log_var, new_log_var)
        else:
            z, out, out_log_var = proposal, new_out, new_log_var
        if out_log_var is None:  # Bernoulli: probabilities, and x_m ~ Bernoulli(p)
            p = torch.sigmoid(out)
            draw = (_row_uniform(generators, (d,), x) < p).to(x.dtype)
        else:  # Gaussian: means, and x_m ~ N(mean, sigma^2) kept in the data's [0, 1]
            p = out
            sigma = torch.exp(0.5 * out_log_var)
            draw = (p + sigma * _row_noise(generators, (d,), x)).clamp(0.0, 1.0)
        counted = ((t >= steps // 2) & (t < steps)).to(x.dtype)[:, None]  # (B, 1)
        total += counted * p
        count += counted
        state = torch.where(missing, draw, x)
    if stats is not None and int(proposed):
        stats["acceptance"] = int(accepted) / int(proposed)
    return torch.where(missing, total / count, x)
