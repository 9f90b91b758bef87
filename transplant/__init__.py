"""transplant: give a pretrained causal LM a different tokenizer.

The data flow lives in :mod:`transplant.pipeline`; see shared/DESIGN.md for the contract.
"""

__version__ = "0.1.0"
