"""Sphinx configuration for the ram-ot API reference.

Build (one command, warnings are errors, every cross-reference must resolve):

    python -m sphinx -W --keep-going -n -b html docs/api docs/_build/api
"""

import ram_ot

project = "ram-ot"
author = "ram-ot developers"
release = ram_ot.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = False  # torch.nn.Module's own docstrings reference torch internals
napoleon_use_ivar = True  # NamedTuple "Attributes:" sections must not duplicate the fields
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": False}
exclude_patterns = ["_build"]
html_theme = "alabaster"

# The build runs offline (no intersphinx inventories), so names from torch, numpy and the
# standard library cannot be linked; every reference inside ram_ot must still resolve.
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|open_clip|typing|typing_extensions|collections|contextlib|os|pathlib|PIL)(\..*)?"),
    (r"py:.*", r"(Tensor|Module|nn\.Module|Optional|Sequence|Callable|Iterable|Iterator|Mapping|Any|Union|Literal|NamedTuple|Path|PathLike|Dataset|Sampler|Optimizer|LRScheduler|GradScaler|device|dtype|ndarray|Image)"),
    (r"py:.*", r"(int|float|str|bool|dict|list|tuple|None|object|type|bytes|callable|optional|Generator)"),
    (r"py:.*", r"(StrPath|PathType|_.*)"),
]
