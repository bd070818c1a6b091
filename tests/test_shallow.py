"""Shallow domain adaptation (crosstask.shallow): properties of each adapter, the scikit-learn contract, errors.

Synthetic data only, except the Office-Caltech checks at the end, which skip when the data are absent.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import scipy.optimize
from scipy.stats import multivariate_normal, spearmanr
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crosstask.errors import ConfigError, DataError
from crosstask.registry import SHALLOW
from crosstask.shallow import build_adapter
from crosstask.shallow.base import SampleWeightIgnored
from crosstask.shallow.coral import CORAL, symmetric_power
from crosstask.shallow.jda import JDA, conditional_mmd_vectors
from crosstask.shallow.kliep import KLIEP
from crosstask.shallow.kmm import KMM, project_box_sum, solve_kmm_qp
from crosstask.shallow.subspace_alignment import SubspaceAlignment
from crosstask.shallow.tca import TCA
from tests.conftest import need

ADAPTERS = ["coral", "jda", "kliep", "kmm", "no_adaptation", "subspace_alignment", "tca"]


def planted_shift(seed: int, n: int = 50, offset: float = 4.0, nuisance: int = 20):
    """Three Gaussian classes in 2 signal dimensions plus ``nuisance`` noise dimensions; the target shifts
    every noise dimension by ``offset`` (a linear, class-independent shift that misleads 1-NN)."""
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(3) / 3
    means = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def domain(shift: float) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(3), n)
        signal = means[y] + rng.normal(size=(len(y), 2))
        return np.hstack([signal, shift + rng.normal(size=(len(y), nuisance))]), y

    (Xs, ys), (Xt, yt) = domain(0.0), domain(offset)
    return Xs, ys, Xt, yt


def covariate_shift(seed: int, ns: int = 300, nt: int = 200):
    """Source N(0, I), target N((1, 0), 0.6² I) in 2-D, and the true ratio p_target/p_source at the source."""
    rng = np.random.default_rng(seed)
    Xs = rng.normal(size=(ns, 2))
    Xt = 0.6 * rng.normal(size=(nt, 2)) + np.array([1.0, 0.0])
    ratio = multivariate_normal([1.0, 0.0], 0.36 * np.eye(2)).pdf(Xs) / multivariate_normal([0.0, 0.0]).pdf(
        Xs
    )
    return Xs, (Xs[:, 1] > 0).astype(int), Xt, ratio


# ----------------------------------------------------------------------------- registry and sklearn contract


def test_every_adapter_is_registered_with_defaults_matching_its_config():
    assert set(ADAPTERS) <= set(SHALLOW.names())
    for name in ADAPTERS:
        entry = SHALLOW.get(name)
        signature = inspect.signature(entry.obj.__init__).parameters
        config_defaults = entry.config.model_validate({"name": name}).model_dump(exclude={"name"})
        init_defaults = {k: p.default for k, p in signature.items() if k not in ("self", "estimator")}
        assert init_defaults == config_defaults, name


@pytest.mark.parametrize("name", ADAPTERS)
def test_sklearn_contract_fit_returns_self_and_params_clone(name):
    Xs, ys, Xt, yt = planted_shift(0, n=20, nuisance=4)
    small = {"n_components": 2} if name in ("tca", "jda", "subspace_alignment") else {}
    adapter = build_adapter({"name": name, **small})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleWeightIgnored)
        assert adapter.fit(Xs, ys, Xt) is adapter
    params = adapter.get_params()
    assert params == {**build_adapter(name).get_params(), **small}
    copy = clone(adapter)
    assert copy.get_params() == params and not hasattr(copy, "estimator_")
    assert adapter.predict(Xt).shape == (len(Xt),)
    assert set(adapter.predict(Xt)) <= set(ys)
    assert 0.0 <= adapter.score(Xt, yt) <= 1.0
    assert adapter.transform(Xt, domain="source").shape[0] == len(Xt)
    assert adapter.set_params(estimator=LogisticRegression()) is adapter
    assert isinstance(adapter.get_params()["estimator"], LogisticRegression)


def test_set_params_with_a_bad_value_is_caught_at_fit():
    Xs, ys, Xt, _ = planted_shift(0, n=20, nuisance=4)
    adapter = TCA(n_components=2).set_params(kernel="sigmoid")
    with pytest.raises(ConfigError, match="kernel"):
        adapter.fit(Xs, ys, Xt)


# ----------------------------------------------------------------------------- CORAL


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coral_gives_the_source_the_target_covariance(seed):
    rng = np.random.default_rng(seed)
    d = 5
    Xs = rng.normal(size=(400, d)) @ rng.normal(size=(d, d))
    Xt = rng.normal(size=(300, d)) @ rng.normal(size=(d, d)) + 3.0
    ys = rng.integers(0, 2, size=400)
    mapped = CORAL(reg=1e-9).fit(Xs, ys, Xt).transform(Xs, domain="source")
    target_cov = np.cov(Xt, rowvar=False)
    np.testing.assert_allclose(np.cov(mapped, rowvar=False), target_cov, atol=1e-6 * np.abs(target_cov).max())
    # with λ > 0 the mapped covariance is exactly C_T^{1/2} (I - λ C_S^{-1}) C_T^{1/2} (both regularized)
    reg = 1.0
    mapped = CORAL(reg=reg).fit(Xs, ys, Xt).transform(Xs, domain="source")
    cs, ct = np.cov(Xs, rowvar=False) + reg * np.eye(d), target_cov + reg * np.eye(d)
    root = symmetric_power(ct, 0.5)
    expected = root @ (np.eye(d) - reg * np.linalg.inv(cs)) @ root
    np.testing.assert_allclose(np.cov(mapped, rowvar=False), expected, rtol=1e-8, atol=1e-10)
    # target samples are left alone; match_mean moves the source mean onto the target mean
    np.testing.assert_array_equal(CORAL().fit(Xs, ys, Xt).transform(Xt), Xt)
    moved = CORAL(match_mean=True).fit(Xs, ys, Xt).transform(Xs, domain="source")
    np.testing.assert_allclose(moved.mean(axis=0), Xt.mean(axis=0), atol=1e-9)


# ----------------------------------------------------------------------------- subspace methods


@pytest.mark.parametrize(
    "adapter",
    [
        TCA(n_components=2),
        SubspaceAlignment(n_components=2),
        JDA(n_components=2, kernel="primal", normalize=False),
    ],
    ids=["tca", "subspace_alignment", "jda"],
)
def test_adapter_beats_no_adaptation_on_a_planted_linear_shift(adapter):
    plain, adapted = [], []
    for seed in range(4):
        Xs, ys, Xt, yt = planted_shift(seed)
        plain.append(build_adapter("no_adaptation").fit(Xs, ys, Xt).score(Xt, yt))
        adapted.append(clone(adapter).fit(Xs, ys, Xt).score(Xt, yt))
    assert np.mean(plain) < 0.8  # the shift does mislead 1-NN
    assert np.mean(adapted) >= 0.95
    assert min(a - p for a, p in zip(adapted, plain, strict=True)) >= 0.0


def test_tca_and_jda_remove_the_mean_shift_direction():
    Xs, ys, Xt, _ = planted_shift(1)
    for adapter in (TCA(n_components=2), JDA(n_components=2, kernel="primal", normalize=False)):
        adapter.fit(Xs, ys, Xt)
        gap = adapter.transform(Xs, "source").mean(axis=0) - adapter.transform(Xt, "target").mean(axis=0)
        spread = adapter.transform(Xs, "source").std(axis=0)
        assert np.all(np.abs(gap) < 0.2 * spread), type(adapter).__name__


def test_jda_conditional_mmd_matrix_matches_the_paper():
    """Σ e eᵀ over the returned columns is C·M_0 + Σ_c M_c (Long et al. 2013, Eq. 3 and 6)."""
    source = np.array([0, 0, 1, 2])
    target = np.array([1, 1, 0])  # class 2 has no pseudo-labeled target sample
    columns = conditional_mmd_vectors(source, target, 3, len(target))
    e0 = np.array([1 / 4] * 4 + [-1 / 3] * 3)
    expected = 3 * np.outer(e0, e0)
    for source_part, target_part in [
        ([1 / 2, 1 / 2, 0, 0], [0, 0, -1]),
        ([0, 0, 1, 0], [-1 / 2, -1 / 2, 0]),
    ]:
        e = np.array(source_part + target_part)
        expected += np.outer(e, e)
    e2 = np.array([0, 0, 0, 1, 0, 0, 0])
    expected += np.outer(e2, e2)
    np.testing.assert_allclose(columns @ columns.T, expected)
    # without pseudo-labels only the marginal term remains (the first JDA solve is TCA)
    np.testing.assert_allclose(conditional_mmd_vectors(source, None, 3, 3), np.sqrt(3) * e0[:, None])


def test_jda_stops_when_pseudo_labels_settle():
    Xs, ys, Xt, _ = planted_shift(0)
    jda = JDA(n_components=2, kernel="primal", normalize=False, n_iter=10).fit(Xs, ys, Xt)
    assert jda.n_iter_ < 10 and jda.label_changes_[-1] == 0  # converged early: same labels twice
    assert jda.pseudo_labels_.shape == (len(Xt),)


# ----------------------------------------------------------------------------- reweighting


@pytest.mark.parametrize("adapter", [KMM(), KLIEP()], ids=["kmm", "kliep"])
def test_weights_follow_the_target_density_and_recover_the_ratio(adapter):
    for seed in range(2):
        Xs, ys, Xt, ratio = covariate_shift(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SampleWeightIgnored)
            weights = clone(adapter).fit(Xs, ys, Xt).sample_weight_
        distance = np.linalg.norm(Xs - np.array([1.0, 0.0]), axis=1)
        assert weights[distance < 0.5].mean() > 20 * weights[distance > 2.0].mean()
        assert spearmanr(weights, ratio)[0] > 0.75
        assert abs(weights.mean() - 1.0) < 0.1  # both normalize the weights to mean ≈ 1 over the source
        informative = ratio > 0.5
        assert np.median(np.abs(np.log(np.maximum(weights[informative], 1e-12) / ratio[informative]))) < 0.7


def test_kliep_density_ratio_is_a_function_and_picks_its_width_without_labels():
    Xs, ys, Xt, _ = covariate_shift(0)
    kliep = KLIEP(gamma=[0.01, 1.0, 100.0], estimator=LogisticRegression()).fit(Xs, ys, Xt)
    assert set(kliep.cv_scores_) == {0.01, 1.0, 100.0} and kliep.gamma_ == 1.0
    np.testing.assert_allclose(kliep.density_ratio(Xs), kliep.sample_weight_)
    assert kliep.density_ratio([[1.0, 0.0]])[0] > 10 * kliep.density_ratio([[-2.5, 0.0]])[0]


def test_kmm_qp_solver_matches_a_reference_solver():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(15, 2))
    K = np.exp(-0.5 * ((X[:, None] - X[None]) ** 2).sum(-1))
    kappa = rng.uniform(0.5, 3.0, size=15) * K.sum(1) / 15
    low, high = 15 * 0.8, 15 * 1.2
    beta, converged, _ = solve_kmm_qp(K, kappa, 4.0, low, high, 1e-10, 50000)
    objective = lambda b: 0.5 * b @ K @ b - kappa @ b  # noqa: E731
    reference = scipy.optimize.minimize(
        objective,
        np.ones(15),
        jac=lambda b: K @ b - kappa,
        hess=lambda b: K,
        bounds=scipy.optimize.Bounds(0.0, 4.0),
        constraints=[scipy.optimize.LinearConstraint(np.ones((1, 15)), low, high)],
        method="trust-constr",
        options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 5000},
    )
    assert converged
    assert objective(beta) <= reference.fun + 1e-7 * abs(reference.fun)
    assert np.all(beta >= 0) and np.all(beta <= 4.0) and low - 1e-9 <= beta.sum() <= high + 1e-9


def test_box_sum_projection_is_the_closest_feasible_point():
    rng = np.random.default_rng(1)
    for _ in range(20):
        v = rng.normal(scale=3.0, size=8)
        p = project_box_sum(v, 2.0, 4.0, 6.0)
        assert np.all(p >= 0) and np.all(p <= 2.0) and 4.0 - 1e-9 <= p.sum() <= 6.0 + 1e-9
        for _ in range(20):  # no feasible point (a random one) is closer
            q = project_box_sum(rng.uniform(0, 2, size=8), 2.0, 4.0, 6.0)
            assert np.linalg.norm(v - p) <= np.linalg.norm(v - q) + 1e-9


def test_weights_reach_estimators_that_take_them_and_warn_otherwise():
    Xs, ys, Xt, _ = covariate_shift(0)
    kmm = KMM(estimator=LogisticRegression()).fit(Xs, ys, Xt)
    manual = LogisticRegression().fit(Xs, ys, sample_weight=kmm.sample_weight_)
    np.testing.assert_allclose(kmm.estimator_.coef_, manual.coef_)
    unweighted = LogisticRegression().fit(Xs, ys)
    assert not np.allclose(kmm.estimator_.coef_, unweighted.coef_)
    pipeline = KMM(estimator=make_pipeline(StandardScaler(), LogisticRegression())).fit(Xs, ys, Xt)
    np.testing.assert_allclose(
        pipeline.estimator_[-1].coef_,
        make_pipeline(StandardScaler(), LogisticRegression())
        .fit(Xs, ys, logisticregression__sample_weight=kmm.sample_weight_)[-1]
        .coef_,
    )
    with pytest.warns(SampleWeightIgnored, match="sample_weight"):
        KMM().fit(Xs, ys, Xt)


# ----------------------------------------------------------------------------- errors


def test_bad_input_gets_clear_errors():
    Xs, ys, Xt, _ = planted_shift(0, n=10, nuisance=3)
    coral = CORAL()
    with pytest.raises(DataError, match="Xs has 5 features but Xt has 4"):
        coral.fit(Xs, ys, Xt[:, :4])
    bad = Xs.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match=r"NaN/inf value\(s\) \(first at row 3, column 2\)"):
        coral.fit(bad, ys, Xt)
    with pytest.raises(DataError, match="at least 2"):
        coral.fit(Xs, ys, Xt[:1])
    with pytest.raises(DataError, match="2-D"):
        coral.fit(Xs[:, 0], ys, Xt)
    with pytest.raises(DataError, match="one label per source sample"):
        coral.fit(Xs, ys[:-1], Xt)
    with pytest.raises(DataError, match="single class"):
        coral.fit(Xs, np.zeros(len(Xs)), Xt)
    with pytest.raises(ConfigError, match="kernel"):
        TCA(kernel="polynomial").fit(Xs, ys, Xt)
    with pytest.raises(ConfigError, match="n_components=100 exceeds"):
        SubspaceAlignment().fit(Xs, ys, Xt)
    with pytest.raises(ConfigError, match="n_components=50 exceeds the 5 features"):
        JDA(n_components=50, kernel="primal").fit(Xs, ys, Xt)
    with pytest.raises(ConfigError, match="reg"):
        CORAL(reg=-1.0).fit(Xs, ys, Xt)
    with pytest.raises(ConfigError, match="estimator must be a scikit-learn classifier"):
        CORAL(estimator="svm").fit(Xs, ys, Xt)
    fitted = coral.fit(Xs, ys, Xt)
    with pytest.raises(ConfigError, match="domain must be 'source' or 'target'"):
        fitted.transform(Xt, domain="test")
    with pytest.raises(DataError, match="fitted on 5"):
        fitted.predict(Xt[:, :3])
    with pytest.raises(ConfigError, match="Did you mean 'coral'"):
        build_adapter({"name": "corla"})
    with pytest.raises(ConfigError, match="unknown key 'lambda'"):
        build_adapter({"name": "jda", "lambda": 1.0})
    with pytest.raises(ConfigError, match="gamma"):
        KLIEP(gamma=[]).fit(Xs, ys, Xt)


# ----------------------------------------------------------------------------- Office-Caltech SURF (data)


@pytest.mark.data
def test_office_caltech_reproduces_the_published_dslr_to_webcam_rows(data_root):
    """D→W: 1-NN 63.39, TCA 86.10, JDA 89.49 (Long et al. 2013, Table; jindongwang/transferlearning)."""
    need(data_root, "office_caltech10/surf")
    from crosstask.data.datasets.base import load_dataset

    def domain(name):
        dataset = load_dataset({"name": "office_caltech_surf", "domain": name}, root=data_root)
        return dataset.x.numpy().astype(np.float64), dataset.y.numpy()

    (Xs, ys), (Xt, yt) = domain("dslr"), domain("webcam")
    assert Xs.shape == (157, 800) and Xt.shape == (295, 800) and set(ys) == set(range(10))
    assert round(100 * build_adapter("no_adaptation").fit(Xs, ys, Xt).score(Xt, yt), 2) == 63.39
    assert round(100 * build_adapter("tca").fit(Xs, ys, Xt).score(Xt, yt), 2) == 86.10
    assert round(100 * build_adapter("jda").fit(Xs, ys, Xt).score(Xt, yt), 2) == 89.49
