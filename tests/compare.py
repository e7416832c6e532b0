"""How tests compare tensors with a reference: stated tolerances, and on failure the first values and the
largest difference, so a failing parity test says where it is off and by how much."""

import torch


def max_diff(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


def assert_close(actual, expected, atol, rtol, what):
    """torch.testing.assert_close with a message that says what was compared and shows the first values."""
    torch.testing.assert_close(
        actual, expected, atol=atol, rtol=rtol,
        msg=lambda m: f"{what}: {m}\n  ours:      {actual.flatten()[:6].tolist()}\n"
                      f"  reference: {expected.flatten()[:6].tolist()}\n  max |diff| = {max_diff(actual, expected):.3g}",
    )
