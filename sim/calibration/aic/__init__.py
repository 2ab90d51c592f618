"""Cost profiles derived from NVIDIA aiconfigurator-core's measured vLLM kernel tables.

``simlb profile derive`` (one profile) and ``python -m sim.calibration.aic --all --out
profiles/`` (the shipped ``*-aic`` profiles). Needs the optional extra ``calibrate``
(``pip install -e '.[calibrate]'``). Modules: ``tables`` (reading and looking up the parquet
tables), ``model`` (HF config -> shape), ``terms`` (the step-model terms), ``build`` (KV, checks,
provenance), ``ship`` (the shipped targets).
"""
