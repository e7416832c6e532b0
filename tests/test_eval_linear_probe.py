"""The linear probe (miniclip/evaluate/linear_probe.py): a separable problem, a problem whose answer is known in
closed form, an independent Newton's-method solution of the same objective, the paper's search for the L2
strength, and `miniclip eval linear-probe`."""

import json

import pytest
import torch
import torch.nn.functional as F
from test_cli import make_image

from miniclip.cli import main
from miniclip.errors import InputError
from miniclip.evaluate import fit_logistic_regression, linear_probe
from miniclip.evaluate.linear_probe import SEARCH_RESOLUTION


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: problems of tens of rows on one thread


def clusters(n_per_class: int, seed: int, dim: int = 8, n_classes: int = 3, spread: float = 0.5):
    """Gaussian blobs around 4 x the first unit vectors: linearly separable with a wide margin."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = 4 * F.one_hot(y, dim).float() + spread * torch.randn(len(y), dim, generator=g)
    return x, y


def test_separable_features_are_classified_perfectly():
    train_x, train_y = clusters(20, seed=0)
    test_x, test_y = clusters(10, seed=1)
    result = linear_probe(train_x, train_y, test_x, test_y)
    assert result.accuracy == 1.0
    # the paper's search: the 7-point grid 1e-6..1e6, then halving around the best to 8 steps a decade
    # (15 fits, fewer when the best is at an end of the range and half the neighbours fall outside it)
    assert {-6, -4, -2, 0, 2, 4, 6} <= set(result.validation) and 11 <= len(result.validation) <= 15
    assert all(abs(e * 8 - round(e * 8)) < 1e-9 for e in result.validation)
    chosen = round(torch.log10(torch.tensor(result.lam)).item() * 8) / 8
    assert result.validation[chosen] == max(result.validation.values())


def test_categorical_feature_gives_the_empirical_frequencies():
    # One one-hot feature (3 groups) and a bias: the unpenalised maximum-likelihood model predicts, for each
    # group, the class frequencies seen in that group (the closed form: p(y | group) = count / group size).
    counts = torch.tensor([[6, 3, 1], [1, 8, 1], [2, 2, 6]])  # counts[group, class]
    x, y = [], []
    for group in range(3):
        for c in range(3):
            x += [F.one_hot(torch.tensor(group), 3).double()] * int(counts[group, c])
            y += [c] * int(counts[group, c])
    x, y = torch.stack(x), torch.tensor(y)
    model = fit_logistic_regression(x, y, 3, lam=1e-8)  # practically unpenalised
    probs = model.logits(torch.eye(3, dtype=torch.float64)).softmax(dim=-1)
    torch.testing.assert_close(probs, counts / counts.sum(dim=1, keepdim=True), atol=1e-3, rtol=0, check_dtype=False)
    # its accuracy is that of the majority class of each group: (6 + 8 + 6) / 30
    assert model.accuracy(x, y) == pytest.approx(20 / 30)


def newton(x, y, n_classes, lam, steps=30):
    """The same objective minimised by Newton's method with the exact Hessian (torch.autograd.functional)."""
    d = x.shape[1]

    def objective(theta):
        w, b = theta[: n_classes * d].view(n_classes, d), theta[n_classes * d:]
        return F.cross_entropy(x @ w.t() + b, y) + lam / 2 * (w * w).sum()

    theta = torch.zeros(n_classes * (d + 1), dtype=torch.float64)
    for _ in range(steps):
        grad = torch.autograd.functional.jacobian(objective, theta)
        hess = torch.autograd.functional.hessian(objective, theta)
        # the bias is unpenalised and softmax is shift-invariant: the Hessian is singular along one direction
        theta = theta - torch.linalg.lstsq(hess, grad[:, None]).solution[:, 0]
    return theta[: n_classes * d].view(n_classes, d), theta[n_classes * d:]


def test_lbfgs_equals_newtons_method():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.7 * torch.randn(40, generator=g, dtype=torch.float64) > 0).long() + (x[:, 1] > 0.5).long()
    w, b = newton(x, y, 3, lam=0.05)
    model = fit_logistic_regression(x, y, 3, lam=0.05)
    # softmax is unchanged by adding a constant to every class's bias: compare what is identified
    torch.testing.assert_close(model.weight, w, atol=1e-3, rtol=0)
    torch.testing.assert_close(model.bias - model.bias.mean(), b - b.mean(), atol=1e-3, rtol=0)
    test = torch.randn(30, 5, generator=g, dtype=torch.float64)
    assert torch.equal(model.predict(test), (test @ w.t() + b).argmax(dim=-1))


def test_a_given_validation_set_is_used():
    train_x, train_y = clusters(10, seed=2, spread=3.0)
    val_x, val_y = clusters(10, seed=3, spread=3.0)
    test_x, test_y = clusters(10, seed=4, spread=3.0)
    result = linear_probe(train_x, train_y, test_x, test_y, val_x=val_x, val_y=val_y)
    for e, acc in result.validation.items():  # each lam's validation accuracy, recomputed
        assert acc == fit_logistic_regression(train_x, train_y, 3, 10.0 ** e).accuracy(val_x, val_y)
    refit = fit_logistic_regression(train_x, train_y, 3, result.lam)
    assert result.accuracy == refit.accuracy(test_x, test_y)
    assert SEARCH_RESOLUTION == 1 / 8
    with pytest.raises(InputError, match="at least 2 training images"):
        linear_probe(train_x[:1], train_y[:1], test_x, test_y)


def test_linear_probe_command(tmp_path, tiny_dir, capsys):
    for split, n in (("train", 4), ("test", 2)):
        for c in ("a", "b"):
            for i in range(n):
                make_image(tmp_path / split / c / f"{i}.png", seed=hash((split, c, i)) % 1000)
    argv = ["eval", "linear-probe", str(tmp_path / "train"), str(tmp_path / "test"), "--model", str(tiny_dir),
            "--no-cache"]
    assert main(argv + ["--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["train_images"] == 8 and metrics["test_images"] == 4 and metrics["classes"] == 2
    assert metrics["accuracy"] in (0, 0.25, 0.5, 0.75, 1.0) and 1e-6 <= metrics["lambda"] <= 1e6
    make_image(tmp_path / "test" / "zebra" / "0.png")
    assert main(argv) == 1
    assert "zebra: the test set's class folders must be among the training set's" in capsys.readouterr().err
