"""Distributed strategies for the Trainer (FSDP2/ModelParallel arrives with the scale-out work)."""


def auto() -> str:
    """Let Lightning pick: single device, or DDP when more than one device is configured."""
    return "auto"
