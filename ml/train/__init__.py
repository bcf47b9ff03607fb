"""Training recipes: supervised fine-tuning (``sft``), preference optimisation (``preference``), and what they share
(``checkpoints``, ``hooks``, ``tracking``)."""
