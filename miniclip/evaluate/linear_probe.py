"""Linear probes (Radford et al. 2021, appendix A.3): logistic regression on frozen image features.

The paper fits scikit-learn's L-BFGS logistic regression (1,000 iterations at most) to the image features
and picks the L2 strength on a validation split: "a hyperparameter sweep on the validation sets over the
range between 10^-6 and 10^6, with 96 logarithmically spaced steps", done as "a parametric binary search
that starts with [10^-6, 10^-4, ..., 10^6] and iteratively halves the interval around the peak until it
reaches a resolution of 8 steps per decade". The same here, in torch, with no scikit-learn:

    minimise over W, b:   mean_i cross_entropy(W x_i + b, y_i) + lam / 2 * ||W||^2      (b unpenalised)

which is scikit-learn's LogisticRegression(C=1 / (lam * n_train)) objective divided by C * n_train. It is
solved in float64 by torch.optim.LBFGS with a strong-Wolfe line search, from zero.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError

SEARCH_START = (-6, -4, -2, 0, 2, 4, 6)  # log10 lam: the paper's first grid
SEARCH_RESOLUTION = 1 / 8  # stop halving at 8 steps per decade (the 96-step grid's spacing)
MAX_ITER = 1000  # the paper's (scikit-learn's max_iter=1000)
VALIDATION_FRACTION = 0.2  # of the training set, when no validation set is given


@dataclass
class LogisticRegression:
    weight: torch.Tensor  # (n_classes, dim), float64
    bias: torch.Tensor  # (n_classes,)
    lam: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.weight) @ self.weight.t() + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(dim=-1)

    def accuracy(self, features: torch.Tensor, targets: torch.Tensor) -> float:
        return (self.predict(features) == torch.as_tensor(targets)).double().mean().item()


def fit_logistic_regression(features: torch.Tensor, targets, n_classes: int, lam: float,
                            max_iter: int = MAX_ITER) -> LogisticRegression:
    """The multinomial logistic regression minimising the objective in the module docstring."""
    x = features.double()
    y = torch.as_tensor(targets, dtype=torch.long)
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ w.t() + b, y) + lam / 2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(objective)  # one step runs L-BFGS to convergence or max_iter
    return LogisticRegression(w.detach(), b.detach(), lam)


@dataclass
class ProbeResult:
    accuracy: float  # on the test set, with the chosen lam, refit on the whole training set
    lam: float
    validation: dict  # log10 lam -> validation accuracy, for every lam tried
    model: LogisticRegression


def linear_probe(train_x: torch.Tensor, train_y, test_x: torch.Tensor, test_y, n_classes: int | None = None,
                 val_x: torch.Tensor | None = None, val_y=None, seed: int = 0) -> ProbeResult:
    """Choose lam on the validation set (or a VALIDATION_FRACTION split of train), refit on all of train,
    and report the test accuracy."""
    train_y, test_y = torch.as_tensor(train_y, dtype=torch.long), torch.as_tensor(test_y, dtype=torch.long)
    n_classes = n_classes or int(max(train_y.max(), test_y.max())) + 1
    if val_x is None:
        fit_x, fit_y, val_x, val_y = split(train_x, train_y, seed)
    else:
        fit_x, fit_y, val_y = train_x, train_y, torch.as_tensor(val_y, dtype=torch.long)
    validation = {}

    def score(e: float):
        if e not in validation:
            model = fit_logistic_regression(fit_x, fit_y, n_classes, 10.0 ** e)
            loss = F.cross_entropy(model.logits(val_x), val_y).item()
            validation[e] = (model.accuracy(val_x, val_y), -loss)  # ties in accuracy: the lower loss
        return validation[e]

    best = max(SEARCH_START, key=score)
    step = 2.0
    while step > SEARCH_RESOLUTION:
        step /= 2
        for e in (best - step, best + step):
            if SEARCH_START[0] <= e <= SEARCH_START[-1]:
                score(e)
        best = max(validation, key=lambda e: validation[e])
    model = fit_logistic_regression(train_x, train_y, n_classes, 10.0 ** best)
    return ProbeResult(model.accuracy(test_x, test_y), 10.0 ** best,
                       {e: acc for e, (acc, _) in sorted(validation.items())}, model)


def split(x: torch.Tensor, y: torch.Tensor, seed: int):
    """A random VALIDATION_FRACTION of the rows (at least one) for validation, the rest for fitting."""
    n = len(y)
    if n < 2:
        raise InputError(f"a linear probe needs at least 2 training images (one to fit, one to validate); got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(VALIDATION_FRACTION * n))
    val, fit = order[:n_val], order[n_val:]
    return x[fit], y[fit], x[val], y[val]
