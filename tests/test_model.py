"""The network, its numerics, the optimiser and the argument checks."""

import dataclasses
import json
import re
import warnings

import numpy as np
import pytest

import mlp_core as mlp


@pytest.fixture
def no_fp_warnings():
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e8, 1e30, 1e300])
def test_softmax_and_cross_entropy_are_stable_at_extreme_logits(scale, no_fp_warnings):
    logits = np.array([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]) * scale
    p = mlp.softmax_and_losses(logits)[0]  # the softmax every forward pass uses
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    right = mlp.cross_entropy(logits, np.array([0, 1, 2]))
    wrong = mlp.cross_entropy(logits, np.array([1, 0, 0]))
    assert np.isfinite(right) and np.isfinite(wrong)
    if scale >= 1e8:  # a hopelessly wrong confident prediction costs about the logit gap, not inf
        assert wrong == pytest.approx((2 * scale + 2 * scale + np.log(3)) / 3, rel=1e-6)
        assert right == pytest.approx(np.log(3) / 3, rel=1e-6)


def test_cross_entropy_matches_the_definition():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(5, 10)), rng.integers(0, 10, 5)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert mlp.cross_entropy(logits, labels) == pytest.approx(
        -np.log(p[np.arange(5), labels]).mean()
    )


@pytest.mark.parametrize("activation", ["sigmoid", "improved_sigmoid"])
def test_activations_and_slopes(activation, no_fp_warnings):
    f, slope = mlp.ACTIVATIONS[activation]
    z = np.array([-1e4, -30.0, -1.0, 0.0, 0.5, 30.0, 1e4])
    a = f(z.copy())
    expected = (
        1 / (1 + np.exp(-z.clip(-500, 500)))
        if activation == "sigmoid"
        else 1.7159 * np.tanh(2 * z / 3)
    )
    np.testing.assert_allclose(a, expected, rtol=1e-12, atol=1e-15)
    zz = np.linspace(-4, 4, 41)
    numeric = (f(zz + 1e-6) - f(zz - 1e-6)) / 2e-6
    np.testing.assert_allclose(slope(f(zz.copy())), numeric, rtol=1e-6, atol=1e-9)


def test_improved_sigmoid_slope_at_zero():
    _, slope = mlp.ACTIVATIONS["improved_sigmoid"]
    assert slope(np.array(0.0)) == pytest.approx(1.7159 * 2 / 3)
    assert slope(np.zeros(3))[0] == pytest.approx(1.7159 * 2 / 3)


@pytest.mark.parametrize("activation", ["sigmoid", "improved_sigmoid"])
def test_slopes_write_in_place(activation):
    f, slope = mlp.ACTIVATIONS[activation]
    a = f(np.linspace(-3, 3, 7))
    out = np.empty_like(a)
    assert slope(a, out=out) is out
    np.testing.assert_allclose(out, slope(a))


def test_forward_shapes_and_probabilities():
    model = mlp.MLP([60, 60, 10], rng=0)
    X = np.random.default_rng(1).normal(size=(7, 785)).astype(np.float32)
    y_hat = model.forward(X)
    assert y_hat.shape == (7, 10) and y_hat.dtype == np.float32
    np.testing.assert_allclose(y_hat.sum(1), 1, rtol=1e-5)
    assert [w.shape for w in model.weights] == [(785, 60), (60, 60), (60, 10)]
    assert model.n_parameters == 785 * 60 + 60 * 60 + 600


@pytest.mark.parametrize("init, expected_std", [("uniform", 1 / np.sqrt(3)), ("fan_in", None)])
def test_initialisation(init, expected_std):
    model = mlp.MLP([64, 64, 10], init=init, rng=3, dtype="float64")
    for w in model.weights:
        std = expected_std if expected_std is not None else 1 / np.sqrt(w.shape[0])
        assert w.std() == pytest.approx(std, rel=0.1)
        if init == "uniform":
            assert w.min() >= -1 and w.max() <= 1


@pytest.mark.parametrize("layers", [[64, 10], [64, 64, 10]])
@pytest.mark.parametrize("activation", ["sigmoid", "improved_sigmoid"])
def test_gradient_check_within_epsilon_squared(layers, activation, small_data):
    model = mlp.MLP(layers, activation=activation, init="uniform", dtype="float64", rng=2022)
    X, Y = small_data.train.X[:100].astype(np.float64), small_data.train.Y[:100].astype(np.float64)
    error = mlp.gradient_check(model, X, Y, epsilon=1e-3)
    assert 0 < error < 1e-3**2


def test_gradient_check_detects_a_wrong_gradient(small_data):
    model = mlp.MLP([16, 10], dtype="float64", rng=0)
    X, Y = small_data.train.X[:20].astype(np.float64), small_data.train.Y[:20].astype(np.float64)
    model.backward = lambda y_hat, Y, _orig=model.backward: [g * 1.01 for g in _orig(y_hat, Y)]
    assert mlp.gradient_check(model, X, Y) > 1e-6


@pytest.mark.parametrize("poison", ["weight", "input"])
def test_gradient_check_fails_on_nan(small_data, poison):
    """A check that cannot fail is no check: NaN anywhere is an error, never a perfect 0."""
    model = mlp.MLP([16, 10], dtype="float64", rng=0)
    X, Y = small_data.train.X[:20].astype(np.float64), small_data.train.Y[:20].astype(np.float64)
    if poison == "weight":
        model.weights[0][3, 2] = np.nan
    else:
        X = X.copy()
        X[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite values"):
        mlp.gradient_check(model, X, Y)


def test_gradient_check_needs_float64(small_data):
    with pytest.raises(ValueError, match="needs a float64 model"):
        mlp.gradient_check(mlp.MLP([16, 10], rng=0), small_data.train.X[:5], small_data.train.Y[:5])


def test_backward_against_an_independent_implementation():
    """MLP.backward (the pass training uses) against the matrix formulas of Task 1b written out
    separately, for three layers of different widths and both activations."""
    rng = np.random.default_rng(4)
    X, labels = rng.normal(size=(9, 785)), rng.integers(0, 10, 9)
    Y = mlp.one_hot(labels, dtype=np.float64)
    for activation, f, df in (
        ("sigmoid", lambda z: 1 / (1 + np.exp(-z)), lambda a: a * (1 - a)),
        (
            "improved_sigmoid",
            lambda z: 1.7159 * np.tanh(2 * z / 3),
            lambda a: (2 / 3) / 1.7159 * (1.7159**2 - a**2),
        ),
    ):
        model = mlp.MLP([7, 5, 10], activation=activation, init="fan_in", dtype="float64", rng=1)
        W1, W2, W3 = model.weights
        A1 = f(X @ W1)
        A2 = f(A1 @ W2)
        Z3 = A2 @ W3
        P = np.exp(Z3 - Z3.max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        D3 = (P - Y) / len(X)
        D2 = df(A2) * (D3 @ W3.T)
        D1 = df(A1) * (D2 @ W2.T)
        expected = [X.T @ D1, A1.T @ D2, A2.T @ D3]
        for g, e in zip(model.backward(model.forward(X), Y), expected):
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-15)
        assert model.loss(X, labels) == pytest.approx(
            -np.log(P[np.arange(9), labels]).mean(), rel=1e-12
        )
        np.testing.assert_allclose(model.hidden_outputs(X)[1], A2, rtol=1e-12)


def test_the_forward_pass_is_its_layers_one_after_another():
    """logits() is MLP.layer applied layer by layer, each into its buffer: f(a W) for the hidden
    layers, a W for the last; `start` begins at a hidden layer's output."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((6, 12)).astype(np.float32)
    model = mlp.MLP([7, 5, 10], input_size=12, rng=2)
    W1, W2, W3 = model.weights
    a1 = model.layer(0, X)
    np.testing.assert_array_equal(a1, mlp.sigmoid(X @ W1))
    a2 = model.layer(1, a1)
    np.testing.assert_array_equal(model.layer(2, a2), a2 @ W3)
    buffers = mlp.Buffers(model, len(X))
    np.testing.assert_array_equal(model.logits(X, buffers), model.layer(2, a2))
    np.testing.assert_array_equal(buffers.outputs[0], a1)
    np.testing.assert_array_equal(model.logits(a1, start=1), model.layer(2, a2))
    out = np.empty((6, 7), np.float32)
    assert model.layer(0, X, out=out) is out


def test_a_training_step_uses_the_backward_pass(small_data):
    """One step of train() moves every weight by exactly lr times MLP.backward's gradient on the
    first batch: training and MLP.backward are one implementation."""
    cfg = mlp.RunConfig(
        n_train=640,
        n_val=500,
        max_epochs=1,
        dtype="float64",
        init="fan_in",
        layer_sizes=(16, 8, 10),
    )
    h = mlp.train(cfg, progress=False, should_stop=lambda: True)
    assert h.steps == 1
    start = mlp.initial_model(cfg)
    batch = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(2)[1]).permutation(
        cfg.n_train
    )[:32]
    data = mlp.prepare_data(640, "float64", 500)
    grads = start.backward(start.forward(data.train.X[batch]), data.train.Y[batch])
    for w0, w1, g in zip(start.weights, h.weights, grads):
        np.testing.assert_allclose(w1, w0 - cfg.learning_rate * g, rtol=1e-12, atol=1e-15)
    assert h.train_loss[0] == pytest.approx(
        start.loss(data.train.X[batch], data.train.labels[batch]), rel=1e-12
    )


def test_momentum_update_worked_by_hand():
    w = [np.array([1.0, -2.0])]
    sgd = mlp.SGD(learning_rate=0.1, momentum=0.9)
    sgd.step(w, [np.array([2.0, 1.0])])  # dW(0) = g = [2, 1];          w = [1, -2] - 0.1 [2, 1]
    np.testing.assert_allclose(w[0], [0.8, -2.1])
    sgd.step(w, [np.array([1.0, -1.0])])  # dW(1) = [1, -1] + 0.9 [2, 1] = [2.8, -0.1]
    np.testing.assert_allclose(w[0], [0.8 - 0.28, -2.1 + 0.01])
    plain = [np.array([1.0])]
    mlp.SGD(0.5).step(plain, [np.array([4.0])])
    np.testing.assert_allclose(plain[0], [-1.0])


def test_parameter_counts():
    assert mlp.count_parameters([64, 10]) == 50_880
    assert mlp.count_parameters([64, 10], output_bias=True) == 50_890
    assert mlp.count_parameters([60, 60, 10]) == 51_300
    assert mlp.count_parameters([59, 59, 10]) == 50_386
    assert mlp.count_parameters([64] * 10 + [10]) == 785 * 64 + 9 * 64 * 64 + 640


# ---- Bad arguments name the argument and the value ---------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layer_sizes=[]), "layer_sizes must list positive integers, .* got \\[\\]"),
        (dict(layer_sizes=[0, 10]), "got \\[0, 10\\]"),
        (dict(layer_sizes=[-5, 10]), "got \\[-5, 10\\]"),
        (dict(layer_sizes=[64.5, 10]), "got \\[64.5, 10\\]"),
        (dict(layer_sizes=[64, 7]), "then the 10 outputs, .* got \\[64, 7\\]"),
        (dict(activation="relu"), "activation must be one of .* got 'relu'"),
        (dict(init="xavier"), "init must be one of .* got 'xavier'"),
        (dict(dtype="float16"), "dtype must be one of \\['float32', 'float64'\\], got 'float16'"),
        (dict(input_size=0), "input_size must be an integer >= 1, got 0"),
    ],
)
def test_model_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mlp.MLP(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(learning_rate=0), "learning_rate must be a finite number > 0, got 0"),
        (dict(learning_rate=-1), "learning_rate must be a finite number > 0, got -1"),
        (dict(learning_rate=float("nan")), "learning_rate .* got nan"),
        (dict(momentum=1.0), "momentum must be in \\[0, 1\\), got 1.0"),
        (dict(momentum=-0.1), "momentum must be in \\[0, 1\\), got -0.1"),
        (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
        (dict(max_epochs=-1), "max_epochs must be an integer >= 1, got -1"),
        (dict(patience=0), "patience must be an integer >= 1, got 0"),
        (dict(patience=2.5), "patience must be an integer >= 1, got 2.5"),
        (
            dict(n_train=100, batch_size=128),
            "batch_size \\(128\\) must not exceed n_train \\(100\\)",
        ),
        (dict(seed=-1), "seed must be an integer >= 0, got -1"),
        (dict(dtype="int8"), "dtype must be one of"),
        (dict(layer_sizes=()), "layer_sizes must list positive integers"),
    ],
)
def test_config_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mlp.RunConfig(**kwargs)


def test_input_errors():
    model = mlp.MLP([8, 10], rng=0)
    with pytest.raises(
        ValueError,
        match=r"X must be a floating-point array of shape \(N, 785\).*got float32 \(3, 784\)",
    ):
        model.forward(np.zeros((3, 784), np.float32))
    with pytest.raises(ValueError, match="X must be a floating-point array of shape"):
        model.forward(np.zeros(785, np.float32))
    with pytest.raises(
        ValueError, match=r"X must be a floating-point array .* got uint8 \(3, 785\)"
    ):
        model.forward(np.zeros((3, 785), np.uint8))
    with pytest.raises(
        ValueError, match=r"labels must be 2 integers in \[0, 9\], got int64 \(2,\) from 0 to 10"
    ):
        model.loss(np.zeros((2, 785), np.float32), np.array([0, 10]))
    with pytest.raises(ValueError, match="labels must be 2 integers"):
        model.loss(np.zeros((2, 785), np.float32), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="Y must be one-hot of shape"):
        model.backward(model.forward(np.zeros((2, 785), np.float32)), np.zeros((2, 9)))


def _plain_gradient_check(model, X, Y, epsilon):
    """The textbook loop: move one weight by +eps and -eps, recompute C, compare."""
    labels = Y.argmax(axis=1)
    analytic = model.backward(model.forward(X), Y)
    worst = 0.0
    for W, G in zip(model.weights, analytic):
        for index in np.ndindex(W.shape):
            original = W[index]
            W[index] = original + epsilon
            c_plus = model.loss(X, labels)
            W[index] = original - epsilon
            c_minus = model.loss(X, labels)
            W[index] = original
            numerical = (c_plus - c_minus) / (2 * epsilon)
            worst = max(worst, abs(numerical - G[index]))
    return worst


@pytest.mark.parametrize("layers", [[5, 10], [4, 3, 10], [3, 4, 2, 10]])
@pytest.mark.parametrize("activation", ["sigmoid", "improved_sigmoid"])
def test_gradient_check_is_the_plain_one_weight_at_a_time_loop(layers, activation):
    """gradient_check batches the moved weights for speed; it must give the same maximum as the
    plain loop, to 1e-12, on a tiny network (as scikit-learn's test_gradient does)."""
    rng = np.random.default_rng(3)
    model = mlp.MLP(layers, activation=activation, input_size=7, dtype="float64", rng=rng)
    X = mlp.add_bias(rng.normal(size=(5, 6)))
    Y = mlp.one_hot(rng.integers(0, 10, 5), dtype=np.float64)
    for epsilon in (1e-3, 1e-1):
        fast = mlp.gradient_check(model, X, Y, epsilon=epsilon)
        plain = _plain_gradient_check(model, X, Y, epsilon)
        assert fast > 0 and abs(fast - plain) <= 1e-12, (fast, plain)


def test_small_input_errors():
    model = mlp.MLP([4, 10], dtype="float64", rng=0)
    with pytest.raises(ValueError, match="non-empty batch"):
        mlp.gradient_check(model, np.zeros((0, 785)), np.zeros((0, 10)))
    with pytest.raises(ValueError, match="labels must be 3 integers"):
        mlp.cross_entropy(np.zeros((3, 10)), np.array([1, 2]))
    with pytest.raises(ValueError, match="grads must match the weights"):
        optimiser = mlp.SGD(0.1)
        optimiser.step(model.weights, model.weights[:1])


def test_layer_sizes_as_a_numpy_vector_are_plain_integers():
    config = mlp.RunConfig(layer_sizes=np.array([60, 60, 10]))
    assert config.layer_sizes == (60, 60, 10) and all(type(s) is int for s in config.layer_sizes)


def test_config_normalises_numpy_numbers():
    """numpy numbers (from np.arange, np.linspace, ...) are stored as Python numbers, so the
    configuration can be written to JSON and compared with a plain one."""
    config = mlp.RunConfig(
        layer_sizes=np.array([32, 10]),
        seed=np.int64(2),
        learning_rate=np.float32(0.5),
        momentum=np.float64(0.25),
        max_epochs=np.int32(3),
        dtype=np.float64,
        record_grad_norms=np.bool_(True),
    )
    assert config == mlp.RunConfig(
        layer_sizes=(32, 10),
        seed=2,
        learning_rate=0.5,
        momentum=0.25,
        max_epochs=3,
        dtype="float64",
        record_grad_norms=True,
    )
    for value in dataclasses.asdict(config).values():
        assert type(value) in (tuple, int, float, str, bool)
    json.dumps(dataclasses.asdict(config))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name=5), "name must be a string, got 5"),
        (dict(record_grad_norms="yes"), "record_grad_norms must be True or False, got 'yes'"),
        (dict(activation=None), "activation must be one of"),
        (dict(learning_rate=True), "learning_rate must be a finite number > 0, got True"),
        (dict(seed=1.0), "seed must be an integer >= 0, got 1.0"),
        (dict(layer_sizes=(64.0, 10)), "layer_sizes must list positive integers"),
        # a table of sizes (issue 21, point 6): the layer_sizes message, not numpy's
        (dict(layer_sizes=np.array([[64, 10]])), "layer_sizes must list positive integers"),
        (dict(layer_sizes=np.array([[64], [10]])), "layer_sizes must list positive integers"),
        (dict(layer_sizes=[np.array([64]), 10]), "layer_sizes must list positive integers"),
        (dict(layer_sizes=64), "layer_sizes must list positive integers"),
    ],
)
def test_config_rejects_wrong_types(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        mlp.RunConfig(**kwargs)
