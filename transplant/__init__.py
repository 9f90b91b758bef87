"""transplant: give a pretrained causal LM a different tokenizer.

The Python API (:mod:`transplant.api`) mirrors the command line: :func:`model`,
:func:`evaluate`, :func:`compare`, :func:`train`, :func:`train_tokenizer`, :func:`export_gguf`,
:func:`hydra_build`, :func:`hydra_select` and :func:`hypernet.train`. The data flow of one transplant
lives in :mod:`transplant.pipeline`; the README's module map says where everything else is.
"""

__version__ = "0.1.0"

from transplant import hypernet  # noqa: E402  (light: its trainers load when called)
from transplant.api import (  # noqa: E402
    compare, evaluate, evaluate_draft, export_gguf, hydra_build, hydra_select, model, train, train_tokenizer,
)

__all__ = ["model", "evaluate", "evaluate_draft", "compare", "train", "train_tokenizer", "export_gguf", "hydra_build",
           "hydra_select", "hypernet", "__version__"]
