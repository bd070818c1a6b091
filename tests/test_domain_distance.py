"""Domain distances: the proxy A-distance and the MMD, their estimators against brute-force computations,
and their response to a planted shift (rotated digits, shifted Gaussians)."""

from __future__ import annotations

import logging
from itertools import pairwise

import numpy as np
import pytest
import torch
from scipy.ndimage import rotate
from sklearn.datasets import load_digits
from sklearn.svm import LinearSVC

from crosstask.analysis.domain_distance import mmd, per_class_distance, proxy_a_distance
from crosstask.errors import ConfigError, DataError

ANGLES = (0, 15, 30, 60, 90)


def gaussians(n: int = 400, d: int = 5, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    return r.normal(size=(n, d)), r.normal(size=(n, d)) + shift * np.eye(d)[0]


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().images  # (1797, 8, 8), values 0..16


def halves(images: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random halves of the images: source and (before the shift) target."""
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order[: len(images) // 2]], images[order[len(images) // 2 :]]


# ---------------------------------------------------------------- proxy A-distance


@pytest.mark.parametrize("seed", range(3))
def test_pad_is_near_zero_for_one_distribution_and_near_two_for_separated_domains(seed: int) -> None:
    source, target = gaussians(seed=seed)
    assert proxy_a_distance(source, target, seed=seed) <= 0.2
    source, target = gaussians(shift=6.0, seed=seed)
    assert proxy_a_distance(source, target, seed=seed) >= 1.95


def test_pad_balances_the_domain_sizes() -> None:
    # without balancing, always answering "source" would err on 1/11 of the samples: PAD = 1.64
    r = np.random.default_rng(0)
    assert proxy_a_distance(r.normal(size=(1000, 5)), r.normal(size=(100, 5))) <= 0.3


@pytest.mark.parametrize("seed", range(2))
def test_pad_grows_with_the_rotation_of_digits(digits: np.ndarray, seed: int) -> None:
    """Both domains are rotated by a random nuisance angle in ±20° (bilinear): without it, any rotation of
    these 8×8 images is told apart by its interpolation blur alone (PAD ≈ 2 from 15°, see the next test), so
    the planted angle would not be graded. Observed over 10 seeds: PAD = 0.00-0.13, 0.69-0.83, 1.40-1.49,
    ≥ 1.99, ≥ 1.998 at 0, 15, 30, 60, 90°, both classifiers."""
    r = np.random.default_rng(seed)
    source_images, target_images = halves(digits, seed)

    def rotated(images: np.ndarray, angle: float) -> np.ndarray:
        return np.stack([rotate(im, angle + r.uniform(-20, 20), reshape=False, order=1) for im in images])

    source = rotated(source_images, 0)
    pads = [proxy_a_distance(source, rotated(target_images, a), seed=seed) for a in ANGLES]
    assert pads[0] <= 0.2
    assert all(later >= earlier - 0.05 for earlier, later in pairwise(pads)), pads
    assert pads[1] > pads[0] + 0.3 and pads[2] > pads[1] + 0.3, pads
    assert pads[4] > pads[1] + 0.5 and pads[4] >= 1.9, pads


def test_pad_of_plainly_rotated_digits(digits: np.ndarray) -> None:
    """Rotation as asked (cubic spline, no nuisance angle): 0° stays ≈ 0 although the spline leaves 1e-15
    noise in the always-empty corner pixels (standardization must not blow it up into a domain feature), and
    PAD is non-decreasing in the angle (it saturates near 2 from 15° on)."""
    source, target_images = halves(digits, 0)
    pads = [
        proxy_a_distance(source, np.stack([rotate(im, a, reshape=False) for im in target_images]))
        for a in ANGLES
    ]
    assert pads[0] <= 0.2
    assert all(later >= earlier - 0.05 for earlier, later in pairwise(pads)), pads
    assert pads[4] >= 1.9


def test_pad_classifiers() -> None:
    source, target = gaussians(shift=1.0, n=300)
    logistic = proxy_a_distance(source, target)
    svm = proxy_a_distance(source, target, classifier="svm")
    custom = proxy_a_distance(source, target, classifier=LinearSVC(C=0.1))
    assert 0.3 < logistic < 1.5 and abs(svm - logistic) < 0.2 and abs(custom - logistic) < 0.2
    assert proxy_a_distance(source, target, seed=3) == proxy_a_distance(source, target, seed=3)
    with pytest.raises(ConfigError, match="unknown domain classifier 'forest'"):
        proxy_a_distance(source, target, classifier="forest")
    with pytest.raises(ConfigError, match="folds must be an integer"):
        proxy_a_distance(source, target, folds=1)


# ---------------------------------------------------------------- MMD


def gram_mmd(s: np.ndarray, t: np.ndarray, kernel, unbiased: bool) -> float:
    """MMD² from the full Gram matrices, the definition (Gretton et al. 2012, lemma 6 / eq. 5)."""
    k_ss, k_tt, k_st = kernel(s, s), kernel(t, t), kernel(s, t)
    if not unbiased:
        return k_ss.mean() + k_tt.mean() - 2 * k_st.mean()
    n, m = len(s), len(t)
    within_s = (k_ss.sum() - np.trace(k_ss)) / (n * (n - 1))
    within_t = (k_tt.sum() - np.trace(k_tt)) / (m * (m - 1))
    return within_s + within_t - 2 * k_st.mean()


def gaussian_kernel(sigma: float):
    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))

    return k


@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd_gaussian_and_multi_equal_the_gram_matrix_definition(unbiased: bool) -> None:
    source, target = gaussians(n=60, shift=0.7)
    target = target[:45]
    value = mmd(source, target, bandwidth=1.5, unbiased=unbiased)
    assert value == pytest.approx(gram_mmd(source, target, gaussian_kernel(1.5), unbiased), abs=1e-5)
    multi = mmd(source, target, kernel="multi", bandwidth=1.5, unbiased=unbiased)
    per_bandwidth = [
        gram_mmd(source, target, gaussian_kernel(1.5 * f), unbiased) for f in (0.25, 0.5, 1, 2, 4)
    ]
    assert multi == pytest.approx(np.mean(per_bandwidth), abs=1e-5)


def test_mmd_median_heuristic_bandwidth() -> None:
    source, target = gaussians(n=50, shift=0.5)
    joint = np.concatenate([source, target])
    distances = np.sqrt(((joint[:, None] - joint[None]) ** 2).sum(-1))[np.triu_indices(len(joint), 1)]
    assert mmd(source, target) == pytest.approx(mmd(source, target, bandwidth=np.median(distances)), abs=1e-6)


def test_mmd_linear_kernel_is_the_unbiased_squared_distance_of_the_means() -> None:
    source, target = gaussians(n=80, d=4, shift=0.5)
    target = target[:50] + 3.0  # a large common offset: the estimate must not lose precision to it
    source = source + 3.0
    means = np.sum((source.mean(0) - target.mean(0)) ** 2)
    # E‖mean_s‖² = ‖μ_s‖² + tr(Σ_s)/n_s: the U-statistic subtracts the sample covariances' traces / n
    bias = np.trace(np.cov(source.T)) / len(source) + np.trace(np.cov(target.T)) / len(target)
    unbiased = mmd(source, target, kernel="linear")
    assert unbiased == pytest.approx(means - bias, rel=1e-10)
    assert unbiased == pytest.approx(gram_mmd(source, target, lambda a, b: a @ b.T, True), rel=1e-8)
    assert mmd(source, target, kernel="linear", unbiased=False) == pytest.approx(means, rel=1e-10)


@pytest.mark.parametrize("kernel", ["gaussian", "multi", "linear"])
def test_mmd_is_near_zero_for_one_distribution_and_grows_with_the_shift(kernel: str) -> None:
    values = [
        mmd(*gaussians(n=500, shift=shift, seed=1), kernel=kernel) for shift in (0.0, 0.25, 0.5, 1.0, 2.0)
    ]
    # the null estimate is noise around 0, small next to a shift of half a standard deviation
    assert abs(values[0]) < 0.2 * values[2], values
    assert all(b > a for a, b in pairwise(values)), values
    if kernel == "linear":  # the squared distance of the means, shift²
        assert values[-1] == pytest.approx(4.0, rel=0.1)


@pytest.mark.parametrize("kernel", ["gaussian", "multi", "linear"])
def test_mmd_is_symmetric(kernel: str) -> None:
    source, target = gaussians(n=200, shift=0.8)
    assert mmd(source, target, kernel=kernel) == pytest.approx(mmd(target, source, kernel=kernel), rel=1e-5)


def test_mmd_grows_with_the_rotation_of_digits(digits: np.ndarray) -> None:
    source, target_images = halves(digits, 0)
    values = [mmd(source, np.stack([rotate(im, a, reshape=False) for im in target_images])) for a in ANGLES]
    assert abs(values[0]) < 0.01
    assert all(b > a for a, b in pairwise(values)), values


def test_mmd_subsamples_with_the_seed_and_accepts_images_and_tensors() -> None:
    source, target = gaussians(n=300, d=16, shift=0.5)
    full = mmd(source, target)
    sub = mmd(source, target, max_samples=100, seed=1)
    assert sub == mmd(source, target, max_samples=100, seed=1) and sub != full
    assert abs(sub - full) < 0.1
    images = mmd(source.reshape(300, 1, 4, 4), torch.from_numpy(target).float().view(300, 4, 4))
    assert images == pytest.approx(full, abs=1e-5)


BAD = {
    "feature dims": (lambda: mmd(np.ones((5, 3)), np.ones((5, 4))), DataError, "3 features per sample but"),
    "empty": (lambda: mmd(np.ones((0, 3)), np.ones((5, 3))), DataError, "0 sample"),
    "one sample, unbiased": (lambda: mmd(np.ones((1, 3)), np.ones((5, 3))), DataError, "at least 2"),
    "NaN": (lambda: mmd(np.ones((5, 3)), np.full((5, 3), np.nan)), DataError, "NaN/inf"),
    "1-D": (lambda: mmd(np.ones(5), np.ones(5)), DataError, "shape"),
    "kernel": (
        lambda: mmd(np.ones((5, 3)), np.ones((5, 3)), kernel="rbf"),
        ConfigError,
        "unknown MMD kernel",
    ),
    "bandwidth": (lambda: mmd(np.ones((5, 3)), np.ones((5, 3)), bandwidth=0), ConfigError, "positive"),
    "pad dims": (lambda: proxy_a_distance(np.ones((9, 3)), np.ones((9, 2))), DataError, "feature space"),
    "pad folds": (lambda: proxy_a_distance(np.ones((3, 3)), np.ones((9, 3))), DataError, "at least 5"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_inputs_give_one_clear_error(case: str) -> None:
    call, error, message = BAD[case]
    with pytest.raises(error, match=message):
        call()


# ---------------------------------------------------------------- per class


def test_per_class_distance_finds_the_shifted_class(caplog: pytest.LogCaptureFixture) -> None:
    r = np.random.default_rng(0)
    source_labels = np.repeat([0, 1, 2, 3], [100, 100, 1, 50])
    target_labels = np.repeat([0, 1, 2, 4], [100, 100, 5, 50])
    source = r.normal(size=(len(source_labels), 4))
    target = r.normal(size=(len(target_labels), 4)) + 2.0 * (target_labels == 1)[:, None]  # class 1 shifted
    with caplog.at_level(logging.WARNING):
        distances = per_class_distance(source, source_labels, target, target_labels, kernel="linear")
    assert set(distances) == {0, 1}
    assert distances[1] > 10 * abs(distances[0]) and distances[1] > 1.0
    note = caplog.text
    assert "2 (1 source / 5 target samples, needs 2 each)" in note
    assert "3 (only in the source)" in note and "4 (only in the target)" in note

    pads = per_class_distance(source, source_labels, target, target_labels, distance="pad")
    assert set(pads) == {0, 1} and pads[1] > pads[0] + 1.0
    with pytest.raises(DataError, match="one label per sample"):
        per_class_distance(source, source_labels[:-1], target, target_labels)
    with pytest.raises(ConfigError, match="unknown distance"):
        per_class_distance(source, source_labels, target, target_labels, distance="wasserstein")
