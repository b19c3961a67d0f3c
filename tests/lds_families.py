"""Synthetic unit trajectories drawn from known LDS families, shared by the LDS and distance tests."""
from __future__ import annotations

import numpy as np


def random_stable_transition(rng: np.random.Generator, n: int, radius_range=(0.85, 0.99),
                             orthogonal_basis: bool = False) -> np.ndarray:
    """A real n x n matrix with complex-pair eigenvalues of chosen moduli (n even); normal when
    orthogonal_basis is set, otherwise in a random (non-normal) basis."""
    blocks = []
    for _ in range(n // 2):
        r = rng.uniform(*radius_range)
        theta = rng.uniform(0.2, 1.2)
        blocks.append(r * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]))
    A = np.zeros((n, n))
    for k, block in enumerate(blocks):
        A[2 * k:2 * k + 2, 2 * k:2 * k + 2] = block
    basis = rng.normal(size=(n, n))
    if orthogonal_basis:
        basis = np.linalg.qr(basis)[0]
    return basis @ A @ np.linalg.inv(basis)


def lds_family_trajectories(n_families=4, members=6, T=40, d=30, n=4, noise=0.02, seed=0):
    """Unit vectors (T, H, d) and family labels (H,): members of a family share A and C and
    differ in initial state, process noise and observation noise."""
    rng = np.random.default_rng(seed)
    vectors, labels = [], []
    for family in range(n_families):
        A = random_stable_transition(rng, n)
        C = rng.normal(size=(d, n))
        for _ in range(members):
            x = rng.normal(size=n) * 3
            offset = rng.normal(size=d)
            ys = []
            for _ in range(T):
                ys.append(offset + C @ x + noise * rng.normal(size=d))
                x = A @ x + noise * rng.normal(size=n)
            vectors.append(np.array(ys))
            labels.append(family)
    return np.stack(vectors, axis=1), np.array(labels)
