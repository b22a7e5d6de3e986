"""YAML as the project reads it: `yaml.safe_load`, except that a key repeated in one mapping is an
error naming both lines, and every error can be told in one line.

PyYAML keeps the last of two equal keys without a word, so an experiment file naming an arm twice
would silently run one arm, and a config setting `lr` twice would train with whichever came last.

    from distill.strict_yaml import load_yaml, yaml_problem
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}")
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode


class DuplicateKey(ConstructorError):
    """A mapping names the same key twice (a yaml.YAMLError, so every YAML handler catches it)."""


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses repeated keys instead of keeping the last one."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Only the keys written in this mapping: keys a merge (`<<: *base`) brings in may be
        # overridden, as YAML says.
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so below
                continue
            if first is not None:
                raise DuplicateKey(None, None, f"key {key!r} repeats the one on line {first.line + 1}",
                                   key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str | bytes) -> Any:
    """The YAML document in `text`, as `yaml.safe_load` reads it but refusing repeated keys."""
    return yaml.load(text, Loader=StrictLoader)  # StrictLoader is a SafeLoader: no arbitrary objects


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: `line L, column C: <problem>` (PyYAML's own text spans lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())
