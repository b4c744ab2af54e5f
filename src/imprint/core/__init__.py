"""The trainer core: one loop for every task, method, family and modality. It imports no
family, method or task: a task hands it batches and losses (see core/loop.py's Task)."""
