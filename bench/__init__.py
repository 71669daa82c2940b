"""The benchmark suite of the bridge: what an alert costs, measured side by side with its floor.

``python -m bench`` (or ``python bench/run.py``) runs every part and prints one table of figures,
each with its target; ``--quick`` runs small sizes; ``--json FILE`` keeps the figures. Each part
runs alone too: ``python -m bench.serial``, ``bench.storm``, ``bench.itsm_calls``,
``bench.inprocess``, ``bench.memory``, ``bench.cold_import``. ``bench/bench_bounds.py`` (hostile
payloads) is separate.
"""
