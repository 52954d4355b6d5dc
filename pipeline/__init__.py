"""Wires Winnow's stages to options and runners: CLI, config, pipeline assembly."""

#: The stages a run may select (`--stages`, `run.stages`), in pipeline order, named after
#: their packages in `transforms/`.
STAGE_NAMES = ("text", "crawl", "safety", "embed", "dedup", "noise", "balance")
