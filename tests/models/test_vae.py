"""AEVB VAE: shapes, the lower bound by hand, KL, importance sampling against quadrature."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from models.vae import VAE, VAEConfig, impute, kl_standard_normal, scoring_input


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("likelihood", "shape"), [("bernoulli", (28, 28)), ("gaussian", (28, 20))])
def test_shapes(likelihood: str, shape: tuple[int, int]) -> None:
    vae = VAE(VAEConfig(image_shape=shape, hidden=16, latent=5, likelihood=likelihood))  # type: ignore[arg-type]
    d = shape[0] * shape[1]
    x = torch.rand(4, 1, *shape)
    mean, log_var = vae.encode(x)
    assert mean.shape == log_var.shape == (4, 5)
    assert torch.equal(vae.encode(x.flatten(1))[0], mean), "(B, 1, H, W) and (B, D) agree"
    images = vae.decode(mean)
    assert images.shape == (4, 1, *shape)
    assert images.min() >= 0 and images.max() <= 1
    out, dec_log_var = vae.decode_params(mean)
    assert out.shape == (4, d)
    assert (dec_log_var is None) == (likelihood == "bernoulli")
    z, samples = vae.sample(3, _gen())
    assert z.shape == (3, 5) and samples.shape == (3, 1, *shape)
    terms = vae.elbo_terms(x, _gen())
    assert terms.log_px_z.shape == terms.kl.shape == terms.elbo.shape == (4,)
    assert vae(x).shape == ()
    assert vae.importance_log_likelihood(x, k=7, chunk=3, generator=_gen()).shape == (4,)


def _set_tiny(vae: VAE, mean: list[float], log_var: list[float]) -> None:
    """Encoder ignores x and returns `mean`, `log_var`; decoder weights stay random."""
    with torch.no_grad():
        vae.enc_mean.weight.zero_()
        vae.enc_mean.bias.copy_(torch.tensor(mean, dtype=torch.float64))
        vae.enc_log_var.weight.zero_()
        vae.enc_log_var.bias.copy_(torch.tensor(log_var, dtype=torch.float64))


def _decoder_by_hand(vae: VAE, z: list[float]) -> tuple[list[float], list[float] | None]:
    """tanh MLP of one hidden layer evaluated with Python floats (double precision)."""
    first = vae.decoder[0]
    assert isinstance(first, nn.Linear)
    w1, b1 = first.weight.tolist(), first.bias.tolist()
    h = [
        math.tanh(sum(w * zi for w, zi in zip(row, z, strict=True)) + b)
        for row, b in zip(w1, b1, strict=True)
    ]
    w2, b2 = vae.dec_out.weight.tolist(), vae.dec_out.bias.tolist()
    out = [
        sum(w * hi for w, hi in zip(row, h, strict=True)) + b for row, b in zip(w2, b2, strict=True)
    ]
    if vae.dec_log_var is None:
        return out, None
    w3, b3 = vae.dec_log_var.weight.tolist(), vae.dec_log_var.bias.tolist()
    lv = [
        sum(w * hi for w, hi in zip(row, h, strict=True)) + b for row, b in zip(w3, b3, strict=True)
    ]
    return [1 / (1 + math.exp(-o)) for o in out], [max(v, vae.config.min_log_var) for v in lv]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_lower_bound_matches_hand_computation(likelihood: str) -> None:
    torch.manual_seed(0)
    vae = VAE(VAEConfig(image_shape=(1, 3), hidden=4, latent=2, likelihood=likelihood)).double()  # type: ignore[arg-type]
    mean, log_var = [0.3, -0.5], [-1.0, 0.4]
    _set_tiny(vae, mean, log_var)
    x = [1.0, 0.0, 1.0] if likelihood == "bernoulli" else [0.2, 0.9, 0.55]
    eps = torch.randn((1, 2), generator=_gen(5), dtype=torch.float64)[
        0
    ].tolist()  # as the model draws it
    z = [m + math.exp(0.5 * lv) * e for m, lv, e in zip(mean, log_var, eps, strict=True)]
    out, dec_lv = _decoder_by_hand(vae, z)
    if dec_lv is None:  # Bernoulli: x log sigmoid(l) + (1 - x) log(1 - sigmoid(l))
        log_px = sum(
            xi * math.log(1 / (1 + math.exp(-li))) + (1 - xi) * math.log(1 / (1 + math.exp(li)))
            for xi, li in zip(x, out, strict=True)
        )
    else:  # Gaussian: log N(x; mu, exp(lv))
        log_px = sum(
            -0.5 * (math.log(2 * math.pi) + lv + (xi - mu) ** 2 / math.exp(lv))
            for xi, mu, lv in zip(x, out, dec_lv, strict=True)
        )
    kl = sum(0.5 * (m * m + math.exp(lv) - 1 - lv) for m, lv in zip(mean, log_var, strict=True))
    terms = vae.elbo_terms(torch.tensor([x], dtype=torch.float64), _gen(5))
    assert terms.log_px_z.item() == pytest.approx(log_px, rel=1e-12, abs=1e-12)
    assert terms.kl.item() == pytest.approx(kl, rel=1e-12)
    assert terms.elbo.item() == pytest.approx(log_px - kl, rel=1e-12)
    # forward, the training loss, is the negative bound on the same draw
    torch.manual_seed(11)
    loss = vae(torch.tensor([x], dtype=torch.float64))
    torch.manual_seed(11)
    assert loss.item() == -vae.elbo_terms(torch.tensor([x], dtype=torch.float64)).elbo.item()


def test_kl_closed_form_and_torch_distributions() -> None:
    g = _gen(1)
    mean = torch.randn(6, 4, generator=g, dtype=torch.float64) * 2
    log_var = torch.randn(6, 4, generator=g, dtype=torch.float64)
    kl = kl_standard_normal(mean, log_var)
    var = log_var.exp()
    closed = 0.5 * (mean**2 + var - 1 - log_var).sum(-1)
    reference = kl_divergence(Normal(mean, var.sqrt()), Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(kl, closed, rtol=1e-12)
    assert torch.allclose(kl, reference, rtol=1e-10)
    assert torch.all(kl >= 0)
    zero = kl_standard_normal(torch.zeros(1, 3), torch.zeros(1, 3))
    assert zero.item() == 0.0, "KL(N(0, I) || N(0, I)) = 0"


def _quadrature(vae: VAE, x: Tensor) -> tuple[float, float]:
    """Exact log p(x) and ELBO of a 1-D latent VAE by integrating over a fine z grid."""
    z = torch.linspace(-12, 12, 48_001, dtype=torch.float64)
    dz = (z[1] - z[0]).item()
    log_px_z = vae.log_px_z(x, z[:, None, None])[:, 0]  # (G,)
    log_prior = Normal(0.0, 1.0).log_prob(z)
    log_px = torch.logsumexp(log_px_z + log_prior, 0).item() + math.log(dz)
    mean, log_var = vae.encode(x)
    q = Normal(mean[0, 0], (0.5 * log_var[0, 0]).exp())
    expected_log_px_z = (q.log_prob(z).exp() * log_px_z).sum().item() * dz
    elbo = expected_log_px_z - kl_standard_normal(mean, log_var).item()
    return log_px, elbo


@torch.no_grad()
def test_importance_estimate_climbs_from_the_elbo_to_log_px() -> None:
    torch.manual_seed(3)
    vae = VAE(VAEConfig(image_shape=(2, 3), hidden=8, latent=1)).double()
    vae.dec_out.weight.mul_(5)  # a sharper decoder and a broad encoder: a clear gap
    vae.enc_log_var.bias.fill_(1.0)
    x = torch.tensor([[1.0, 0, 1, 1, 0, 0]], dtype=torch.float64)
    log_px, elbo = _quadrature(vae, x)  # about -3.68 and -6.48 nats
    assert log_px - elbo > 1.0, "test needs a visible gap"
    # many independent estimates of the one datapoint: (reps,) per k
    est = {
        k: vae.importance_log_likelihood(x.expand(reps, -1), k=k, generator=_gen(k))
        for k, reps in ((1, 400), (10, 400), (100, 400), (5000, 40))
    }
    mean = {k: e.mean().item() for k, e in est.items()}
    sem = {k: e.std().item() / len(e) ** 0.5 for k, e in est.items()}
    # k = 1 is a one-sample ELBO estimate: same expectation
    assert mean[1] == pytest.approx(elbo, abs=4 * sem[1])
    # above the ELBO, increasing with k, below log p(x) (Jensen) up to noise
    assert elbo < mean[10] < mean[100] < mean[5000] < log_px + 4 * sem[5000]
    assert mean[5000] == pytest.approx(log_px, abs=0.01)
    assert est[10].std() > est[100].std() > est[5000].std(), "the estimate concentrates"


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_one_adam_step_lowers_the_loss(likelihood: str) -> None:
    torch.manual_seed(0)
    config = VAEConfig(image_shape=(4, 4), hidden=16, latent=3, likelihood=likelihood)  # type: ignore[arg-type]
    vae = VAE(config)
    x = (torch.rand(32, 1, 4, 4, generator=_gen(1)) > 0.5).float()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)

    def loss() -> Tensor:
        return -vae.elbo_terms(x, _gen(2)).elbo.mean()  # same eps before and after the step

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    assert loss().item() < before.item()


def test_gaussian_decoder_log_variance_floor() -> None:
    for floor in (-8.0, -3.0):
        vae = VAE(
            VAEConfig(
                image_shape=(2, 2), hidden=4, latent=2, likelihood="gaussian", min_log_var=floor
            )
        )
        assert vae.dec_log_var is not None
        with torch.no_grad():
            vae.dec_log_var.weight.zero_()
            vae.dec_log_var.bias.fill_(-50.0)
        _, log_var = vae.decode_params(torch.randn(5, 2))
        assert log_var is not None and torch.all(log_var == floor)
        # a pixel exactly at the mean: density bounded by the floor, not exp(+25)
        x = torch.full((1, 4), 0.5)
        z = torch.zeros(1, 2)
        mean, _ = vae.decode_params(z)
        bound = -0.5 * 4 * (math.log(2 * math.pi) + floor)
        assert vae.log_px_z(mean.detach(), z).item() == pytest.approx(bound, rel=1e-5)
        assert torch.isfinite(vae.log_px_z(x, z)).all()


def test_paper_init_draws_every_parameter_from_n0_001() -> None:
    torch.manual_seed(0)
    paper = VAE(VAEConfig(hidden=200, latent=10, init="paper"))
    flat = torch.cat([p.detach().flatten() for p in paper.parameters()])  # biases included
    assert abs(float(flat.std()) - 0.01) < 5e-4 and abs(float(flat.mean())) < 5e-4
    assert float(flat.abs().max()) < 0.07  # no parameter left at PyTorch's wider init
    default = VAE(VAEConfig(hidden=200, latent=10))
    assert (
        float(default.encoder[0].weight.detach().std()) > 0.015
    )  # PyTorch's fan-in init, 1/sqrt(784)
    with pytest.raises(ValueError, match="init"):
        VAEConfig(init="xavier")  # type: ignore[arg-type]


# --- marginal inference ---------------------------------------------------------------------
def _sharp_decoder_broad_encoder() -> VAE:
    """A 2x3 Bernoulli VAE with a 1-d latent whose q(z|x) is far from p(z|x)."""
    torch.manual_seed(3)
    vae = VAE(VAEConfig(image_shape=(2, 3), hidden=8, latent=1)).double()
    with torch.no_grad():
        vae.dec_out.weight.mul_(5)
        vae.enc_log_var.bias.fill_(1.0)
    return vae


@torch.no_grad()
def test_score_is_the_importance_estimate_and_chunking_does_not_change_it() -> None:
    vae = _sharp_decoder_broad_encoder()
    x = torch.tensor([[1.0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 1]], dtype=torch.float64)
    eps = torch.randn((50, 2, 1), generator=_gen(4), dtype=torch.float64)
    elbo, log_px = vae.score(x, eps)
    same = vae.importance_log_likelihood(x, k=50, chunk=50, generator=_gen(4))
    torch.testing.assert_close(log_px, same)
    elbo3, log_px3 = vae.score(x, eps, chunk=3)
    torch.testing.assert_close((elbo3, log_px3), (elbo, log_px))
    _, exact_elbo = _quadrature(vae, x[:1])
    many = torch.randn((20_000, 1, 1), generator=_gen(5), dtype=torch.float64)
    assert vae.score(x[:1], many)[0].item() == pytest.approx(exact_elbo, abs=0.1)


def test_scoring_input_binarises_bernoulli_only() -> None:
    x = torch.tensor([0.0, 0.49, 0.5, 0.9])
    assert scoring_input(x, "bernoulli").tolist() == [0.0, 0.0, 1.0, 1.0]
    assert torch.equal(scoring_input(x, "gaussian"), x)


@torch.no_grad()
def test_mwg_samples_the_exact_conditional_where_pseudo_gibbs_does_not() -> None:
    """E[x_m | x_o] by quadrature over z and a sum over the missing pixels' values, against
    the chains' answers averaged over many seeds."""
    vae = _sharp_decoder_broad_encoder()
    observed = torch.tensor([1.0, 0, 1, 1], dtype=torch.float64)
    configs = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float64)
    joint = torch.tensor([math.exp(_quadrature(vae, torch.cat([observed, c])[None])[0])
                          for c in configs])  # fmt: skip
    exact = (joint[:, None] * configs).sum(0) / joint.sum()  # (2,)
    rows = 300
    x = torch.cat([observed, torch.zeros(2, dtype=torch.float64)]).expand(rows, -1)
    missing = torch.tensor([False] * 4 + [True] * 2).expand(rows, -1)
    answers = {}
    stats: dict[str, float] = {}
    for method in ("mwg", "pseudo-gibbs"):
        gens = [_gen(i) for i in range(rows)]
        out = impute(vae, x, missing, torch.full((rows,), 200), method, gens, stats)  # type: ignore[arg-type]
        assert torch.equal(out[:, :4], x[:, :4]), "observed pixels come back unchanged"
        answers[method] = out[:, 4:].mean(0)
    assert 0.05 < stats["acceptance"] < 0.95  # from the mwg chains only
    mwg_error = (answers["mwg"] - exact).abs().max().item()
    pg_error = (answers["pseudo-gibbs"] - exact).abs().max().item()
    assert mwg_error < 0.02, (answers, exact)
    assert pg_error > 2 * mwg_error, (answers, exact)


@torch.no_grad()
def test_impute_rows_are_independent_of_their_batch() -> None:
    """Each row's answer depends on its own seed and steps only."""
    vae = VAE(VAEConfig(image_shape=(4, 4), hidden=8, latent=2))
    x = torch.rand(3, 16, generator=_gen(0))
    missing = torch.rand(3, 16, generator=_gen(1)) < 0.5
    steps = torch.tensor([3, 7, 1])
    for method in ("pseudo-gibbs", "mwg"):
        together = impute(vae, x, missing, steps, method, [_gen(s) for s in (5, 6, 7)])  # type: ignore[arg-type]
        for i, seed in enumerate((5, 6, 7)):
            alone = impute(
                vae, x[i : i + 1], missing[i : i + 1], steps[i : i + 1], method, [_gen(seed)]
            )  # type: ignore[arg-type]
            torch.testing.assert_close(together[i], alone[0], rtol=0, atol=1e-6)
        assert torch.equal(together[~missing], x[~missing])
    with pytest.raises(ValueError, match="method"):
        impute(vae, x, missing, steps, "gibbs", [_gen(0)] * 3)  # type: ignore[arg-type]
