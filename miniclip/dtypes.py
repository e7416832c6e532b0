"""The precisions a model's weights can be loaded in, by name or as a torch dtype.

`CLIP.from_pretrained(..., dtype=)` and `miniclip.load(..., dtype=)` take either, so a command line, a
config file or a notebook can say "fp16" without importing torch.
"""

import torch

from .errors import InputError, InputTypeError

# The names people use for each precision: PyTorch's ("float16", "half"), the mixed-precision shorthands
# ("fp16", "bf16"), and str(torch.float16) ("torch.float16").
DTYPES = {
    torch.float32: ("float32", "fp32", "float"),
    torch.float16: ("float16", "fp16", "half"),
    torch.bfloat16: ("bfloat16", "bf16"),
}
_BY_NAME = {name: dtype for dtype, names in DTYPES.items() for name in (*names, str(dtype))}


def as_dtype(dtype, what: str = "dtype") -> torch.dtype | None:
    """A torch dtype for `dtype` given as a name ("fp16", "bfloat16", "torch.float16") or a torch dtype;
    None stays None (the caller's default).

    >>> as_dtype("bf16"), as_dtype(torch.float16), as_dtype(None)
    (torch.bfloat16, torch.float16, None)
    """
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype.strip().lower() in _BY_NAME:
            return _BY_NAME[dtype.strip().lower()]
    elif isinstance(dtype, torch.dtype):
        if dtype in DTYPES:
            return dtype
    else:
        raise InputTypeError(f"{what} is a {type(dtype).__name__} ({dtype!r}); expected a torch dtype or one of "
                             f"the names {list(_BY_NAME)}")
    raise InputError(f"{what}={dtype!r} is not a precision miniclip loads weights in; expected one of "
                     f"{list(_BY_NAME)} or {[str(d) for d in DTYPES]}")
