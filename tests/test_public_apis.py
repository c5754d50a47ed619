"""The package builds on the public APIs of torch, Pyro and scikit-learn only."""

import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "pyro_mixflows"
LIBRARIES = r"(?:torch|pyro|sklearn|scipy|numpy|np|arviz|az|matplotlib|plt)"
PATTERNS = {
    # torch._dynamo, pyro.optim.optim._load_state_dict, sklearn.utils._param_validation, ...
    "private module or name": re.compile(rf"\b{LIBRARIES}(?:\.\w+)*\._(?!_)\w"),
    # from torch._compile import ..., from pyro.optim.optim import _load_state_dict (an alias
    # "as _name" of a public name is fine)
    "private import": re.compile(
        rf"^\s*from\s+{LIBRARIES}(?:\.\w+)*(?:\._\w+(?:\.\w+)*\s+import"
        r"|\s+import\s+\(?\s*(?:\w+(?:\s+as\s+\w+)?\s*,\s*)*_(?!_)\w)"
    ),
    # torch.optim.Adam._init_group and friends: a private method of a torch optimizer
    "private optimizer method": re.compile(r"\._init_group\b"),
}


def test_no_private_api_of_torch_pyro_or_scikit_learn():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for what, pattern in PATTERNS.items():
                if pattern.search(code):
                    found.append(
                        f"{path.relative_to(PACKAGE.parent)}:{number}: {what}: {line.strip()}"
                    )
    assert not found, "\n".join(found)


def test_the_patterns_catch_what_they_are_for():
    caught = [
        "import torch._dynamo",
        "torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one)",
        "from pyro.optim.optim import _load_state_dict",
        "from torch.optim.adam import adam as _adam",  # public name, private alias: allowed
        "optimizer._init_group(group, params)",
        "from sklearn.utils._testing import ignore_warnings",
    ]
    hits = [any(p.search(line) for p in PATTERNS.values()) for line in caught]
    assert hits == [True, True, True, False, True, True]
    assert not any(p.search("torch.__version__") for p in PATTERNS.values())
