"""Configs read back from disk are data: they may name only lmm's own buildable classes.

A run's saved config, an lmm directory's config.yaml, a replayed overrides.yaml and what
lmm.interop.convert_llava writes are shared, downloaded and re-read months later, and Hydra's
`instantiate` builds whatever `_target_` it finds at any depth. So before anything is built from
such a file it is checked at every depth (dict values and list items alike):
- every `_target_` is one of the classes conf/ names (ALLOWED_TARGETS, read from conf/*.yaml);
- every interpolation calls only the resolvers conf/ uses (`oc.decode`/`oc.create` would build a
  config, `_target_` included, at resolve time, after the check);
- `trust_remote_code` is not switched on (only the user's own command line may do that).
Anything else is refused with UntrustedConfig, one line naming the file and the key.
"""

from __future__ import annotations

import functools
import re

import yaml

from lmm.core.config import CONF
from lmm.core.upgrade import MOVED_TARGETS

# The resolvers conf/ uses (lmm.core.config registers them; `hydra` is Hydra's, and saved configs point
# it at the run's own hydra.yaml) and the one Hydra's saved settings use for dates.
ALLOWED_RESOLVERS = frozenset(
    {"hydra", "repo_path", "run_id", "abspath", "basename", "slurm_gpus", "slurm_tasks", "now"}
)
# Classes earlier versions of conf/ named, which runs saved then still name.
FORMER_TARGETS = frozenset({"lightning.pytorch.loggers.TensorBoardLogger"})
RESOLVER_CALL = re.compile(r"\$\{\s*([^\s:{}]+)\s*:")


class UntrustedConfig(ValueError):
    """A config read from disk that names code lmm does not build from files."""


@functools.cache
def allowed_targets() -> frozenset[str]:
    """Every `_target_` written in conf/ (connectors, towers, LLM builders, data, benchmarks,
    strategies, loggers, launchers): the only classes a file read back may name."""
    targets: set[str] = set()

    def collect(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and isinstance(value, str):
                    targets.add(value)
                collect(value)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    for path in sorted(CONF.rglob("*.yaml")):
        collect(yaml.safe_load(path.read_text()))
    return frozenset(targets) | FORMER_TARGETS | frozenset(MOVED_TARGETS)  # the old names of moved classes


def check_config(node, source: str, path: str = "") -> None:
    """Refuse (UntrustedConfig) a config read from `source` that names code: see the module docstring.
    `node` is a plain container (OmegaConf.to_container(cfg, resolve=False)) or a scalar."""
    where = path or "<top>"
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if key == "_target_" and value not in allowed_targets():
                raise UntrustedConfig(
                    f"{source}: {child}={value!r} is not one of lmm's own classes; a config read from "
                    "disk may not name code to run (refused)"
                )
            if key == "trust_remote_code" and value not in (False, None):
                raise UntrustedConfig(
                    f"{source}: {child}={value!r}: a config read from disk may not turn on remote code; "
                    "pass llm.model.trust_remote_code=true on your own command line if you trust it"
                )
            check_config(value, source, child)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            check_config(item, source, f"{path}[{i}]")
    elif isinstance(node, str):
        for resolver in RESOLVER_CALL.findall(node):
            if resolver not in ALLOWED_RESOLVERS:
                raise UntrustedConfig(
                    f"{source}: {where} calls the resolver {resolver!r}, which lmm does not allow in a "
                    "config read from disk (refused)"
                )


def check_overrides(overrides: list[str], source: str) -> None:
    """The same check for saved command-line overrides (`key=value` strings, Hydra's grammar):
    each is parsed as Hydra will apply it, and its key and value are checked as a config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in overrides:
        if not isinstance(override, str):
            raise UntrustedConfig(f"{source}: {override!r} is not an override string (refused)")
        try:
            parsed = OverridesParser.create().parse_override(override)
        except Exception as e:  # Hydra's grammar error: nothing to replay
            raise UntrustedConfig(
                f"{source}: {override!r} is not a valid override ({type(e).__name__}) (refused)"
            ) from None
        nested = None if parsed.is_delete() else parsed.value()
        for part in reversed(parsed.key_or_group.split(".")):  # `a.b=v` as {a: {b: v}}: the key is checked too
            nested = {part: nested}
        check_config(nested, source)
        check_config(override.split("=", 1)[-1], source, parsed.key_or_group)  # interpolations, as written
