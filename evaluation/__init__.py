"""Reproduce the paper's comparison: RAEE against honest baselines, through the running services."""

BENCHMARK_TASKS = ("sst2", "sst5", "mr", "cr", "trec", "cola")  # docs/method.md's six, under --data-root
FAMILIES = ("paper", "cloze")  # the spec folders under evaluation/tasks/
