"""A GPU type's data-sheet figures (conf/simulate/default.yaml `gpus`), as the time model reads them."""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
GIB = 1024**3


@dataclass(frozen=True)
class GPU:
    memory_gib: float  # what torch reports as the device's total memory
    bf16_tflops: float  # dense bf16 tensor-core peak
    nvlink_gbps: float  # GB/s per GPU per direction inside a node
    network_gbps: float  # GB/s per GPU between nodes
    gpus_per_node: int = 8

    def __post_init__(self):
        for name in ("memory_gib", "bf16_tflops", "nvlink_gbps", "network_gbps", "gpus_per_node"):
            if not getattr(self, name) > 0:
                raise ValueError(f"simulate.gpus.*.{name}={getattr(self, name)!r}: must be a number > 0")

    def bus_bytes_per_s(self, world: int) -> float:
        """A ring over `world` GPUs runs at its slowest link: NVLink within a node, the network beyond."""
        return (self.nvlink_gbps if world <= self.gpus_per_node else self.network_gbps) * GB
