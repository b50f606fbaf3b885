"""The semi-supervised VAE's unlabelled bound (M2, Kingma et al. 2014): y summed out exactly,
checked against a loop over the classes, torch.distributions' entropy and its closed form at the
optimal q(y|x)."""
import torch

from vaelab.losses import class_summed_bound


def test_the_class_summed_bound_is_the_loop_over_the_classes():
    g = torch.Generator().manual_seed(0)
    logits, elbo = torch.randn(6, 10, generator=g, dtype=torch.float64), \
        -100 + 5 * torch.randn(6, 10, generator=g, dtype=torch.float64)
    q = torch.distributions.Categorical(logits=logits)
    loop = torch.zeros(6, dtype=torch.float64)
    for c in range(10):  # E_q(y|x)[L(x, y)], one class at a time
        loop += q.probs[:, c] * elbo[:, c]
    loop += q.entropy()
    assert torch.allclose(class_summed_bound(logits, elbo), loop, rtol=0, atol=1e-10)


def test_the_bound_is_log_sum_exp_at_the_best_q_and_below_it_elsewhere():
    g = torch.Generator().manual_seed(1)
    elbo = -50 + 3 * torch.randn(4, 10, generator=g, dtype=torch.float64)
    tight = torch.logsumexp(elbo, -1)
    # q(y|x) proportional to exp L(x, y): the bound is log sum_y exp L(x, y) exactly
    assert torch.allclose(class_summed_bound(elbo.clone(), elbo), tight, rtol=0, atol=1e-10)
    for _ in range(5):  # any other q(y|x) gives less, by KL(q || the best q)
        logits = torch.randn(4, 10, generator=g, dtype=torch.float64)
        gap = tight - class_summed_bound(logits, elbo)
        kl = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=logits),
                                               torch.distributions.Categorical(logits=elbo))
        assert (gap > 0).all() and torch.allclose(gap, kl, rtol=0, atol=1e-9)


def test_a_certain_q_reads_its_class_and_survives_minus_infinity_logits():
    elbo = torch.tensor([[-10.0, -20.0, -30.0]])
    logits = torch.tensor([[0.0, float("-inf"), float("-inf")]])  # q(y=0|x) = 1
    out = class_summed_bound(logits, elbo)
    assert torch.isfinite(out).all() and out.item() == -10.0
