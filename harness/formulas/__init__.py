"""Pure cost formulas of a transformer: parameters, FLOPs, memory, parallelism, sizing.

No torch import anywhere in this package: these run on any machine and are property-tested.
"""
