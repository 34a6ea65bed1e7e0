"""task=simulate: lmm's own FSDP sharding of the configured model on a fake world of GPUs
(fake process group + fake tensors), measured per rank and extrapolated to cluster sizes.

    fake_step.py    one optimizer step on fake tensors: memory by kind, collectives, FLOPs
    collectives.py  the bytes each collective moves, by component
    hardware.py     GPU data-sheet figures (conf/gpu/)
    scaling.py      step time and scaling efficiency over world sizes; the largest batch that fits
    task.py         the task: tables, simulate.json and the plot in the run directory
"""
