"""The theory: what a model should cost (parameters, FLOPs, memory, communication) and what a GPU
can do at best. Pure Python: nothing here imports torch."""
