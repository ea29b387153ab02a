"""The field's baselines and the benchmark's references, each a RankerSpec (mmrec.evaluation.registry)."""
