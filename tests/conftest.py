import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _pyro_defaults():
    """Fixed seed, an empty param store and validation on, before every test."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """Exact checks run in float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def perturb(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Move every parameter off its (often identity) initial value, reproducibly."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


_DESELECTED: list[str] = []


def pytest_deselected(items):
    """Remember what ``-m 'not slow'`` (the default) left out, to name it at the end."""
    _DESELECTED.extend(item.nodeid for item in items if item.get_closest_marker("slow"))


def pytest_terminal_summary(terminalreporter):
    if _DESELECTED:
        terminalreporter.write_sep(
            "-", f"{len(_DESELECTED)} slow tests not run (run: make test-slow)"
        )
        for nodeid in _DESELECTED:
            terminalreporter.write_line(nodeid)
