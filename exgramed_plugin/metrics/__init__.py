"""The metric conventions of the evaluation: one module per convention (VQA recall and F1, MedEvalKit, MMMU, multiple choice)."""
