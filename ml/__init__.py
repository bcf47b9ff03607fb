"""The machine-learning core, Django-free: hyperparameters (``hparams``), prompt templates (``templates``), rendering
and label masking (``data``), the model and tokenizer loader (``model``), the device probe (``probe``), errors
(``errors``) and the training recipes (``train``). It imports no Django and no project app (``lint-imports``
checks it), so a worker's child process, a benchmark or a notebook can use it alone.
"""
