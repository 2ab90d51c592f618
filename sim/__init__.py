"""simlb: a discrete-event simulator of LLM inference clusters.

Importing ``sim`` is cheap and pulls in neither SimPy nor pydantic, so the profiler
(``python -m sim.profile``) runs on GPU machines that only have PyTorch and numpy.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
