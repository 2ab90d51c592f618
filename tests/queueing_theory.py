"""Closed forms of queueing theory used by the validation tests (mean service time 1/mu).

Sources: Kleinrock, Queueing Systems vol. 1 (M/M/1, M/M/c with Erlang C, M/D/1 and M/G/1 by
Pollaczek-Khinchine, M/G/1-PS); round-robin dispatch makes every server an E_N/M/1 queue
(Erlang-N arrivals; sigma solves sigma = (N lam / (N lam + mu (1 - sigma)))^N, the GI/M/1 root).
``../shared/anchors/queueing_reference_values.csv`` tabulates the same values; a test checks
these functions against it when that file is present.
"""

from __future__ import annotations


def mm1_sojourn(lam: float, mu: float = 1.0) -> float:
    """E[T] of M/M/1."""
    return 1.0 / (mu - lam)


def erlang_c(c: int, a: float) -> float:
    """Probability of waiting in M/M/c with offered load ``a = lam/mu`` (stable recursion)."""
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1 - rho + rho * b)


def mmc_sojourn(c: int, lam: float, mu: float = 1.0) -> float:
    """E[T] of M/M/c (a central FCFS queue in front of c servers)."""
    return erlang_c(c, lam / mu) / (c * mu - lam) + 1.0 / mu


def round_robin_sigma(n: int, lam: float, mu: float = 1.0) -> float:
    """GI/M/1 root for Erlang-n inter-arrivals of rate lam at one server."""
    sigma = 0.5
    for _ in range(10_000):
        new = (n * lam / (n * lam + mu * (1 - sigma))) ** n
        if abs(new - sigma) < 1e-14:
            break
        sigma = new
    return sigma


def round_robin_sojourn(n: int, lam: float, mu: float = 1.0) -> float:
    """E[T] at each of n servers fed round robin from a Poisson stream of rate n*lam."""
    sigma = round_robin_sigma(n, lam, mu)
    return sigma / (mu * (1 - sigma)) + 1.0 / mu


def md1_sojourn(lam: float, d: float = 1.0) -> float:
    """E[T] of M/D/1 (Pollaczek-Khinchine with zero service variance)."""
    rho = lam * d
    return d + rho * d / (2 * (1 - rho))


def mg1_ps_sojourn(x_work: float, rho: float) -> float:
    """E[T | work x] of M/G/1 processor sharing: x / (1 - rho), for any size distribution."""
    return x_work / (1 - rho)
