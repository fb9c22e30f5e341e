"""posthoc-csra: the CSRA residual-attention rule on top of any timm classifier, without retraining.

    from posthoc_csra import load_model, CSRAScorer
    model = load_model("tf_efficientnet_lite0")
    scorer = CSRAScorer(model, lam=0.1, heads=1, space="prob")
    scores = scorer(images)            # (B, C)
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "CSRAScorer": "scorer",
    "UnsupportedModelError": "heads",
    "load_model": "models",
    "class_names": "models",
    "WeightsUnavailableError": "models",
    "score_folder": "folder",
    "HEAD_SETS": "choices",
    "SPACES": "choices",
    "rule": None,
}
__all__ = list(_EXPORTS)


def __getattr__(name):  # lazy: `import posthoc_csra` stays torch-free (instant CLI --help)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'posthoc_csra' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module is None:
        return import_module(f"{__name__}.{name}")
    return getattr(import_module(f"{__name__}.{module}"), name)
