"""The one factory of mappers: the mapper of a preset or a mapping file, with
`--events-only` and the time window (`--since`/`--until`) around it.

    recipe = MapperRecipe(preset=Preset.CLASSIC, options=MappingOptions())
    mapper = recipe(tokens)         # a CountingMapper; `tokens`, the run's set
    mapper.counters.dropped         # what it left out so far

A `MapperRecipe` is plain data (a preset's name, or a mapping file's decoded document),
so a worker process builds the same mapper from its pickled copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ctsync.options import EventsOnly, MappingOptions
from ctsync.presets import Preset, build_preset
from ctsync.records import CountingMapper, TokenKey
from ctsync.sources import TimeWindow
from ctsync.window import WindowedMapper


@dataclass(frozen=True, slots=True)
class MappingDocument:
    """A mapping file as read: where it came from and its decoded JSON, checked already."""

    source: str
    document: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class MapperRecipe:
    """Which mapper a run maps with: `mapping` (a mapping file) replaces `preset`;
    `options.events_only` leaves out profile writes; `window` skips the messages outside
    it before anything is mapped. Calling it builds the mapper (see `build_mapper`)."""

    preset: Preset = Preset.ACTIONS
    mapping: MappingDocument | None = None
    options: MappingOptions = field(default_factory=MappingOptions)
    window: TimeWindow | None = None

    def __call__(self, tokens: set[TokenKey]) -> CountingMapper:
        return build_mapper(self, tokens)


def build_mapper(recipe: MapperRecipe, tokens: set[TokenKey] | None = None) -> CountingMapper:
    """A new mapper (mappers count what they map, so one per run and process). `tokens`
    is the run's set of device tokens sent: each goes once per run."""
    options = recipe.options
    mapper: CountingMapper
    if recipe.mapping is not None:
        from ctsync.mapping import MappingMapper, parse_mapping

        mapping_file = parse_mapping(recipe.mapping.document, recipe.mapping.source)
        mapper = MappingMapper(mapping_file, options, tokens_sent=tokens)
    else:
        mapper = build_preset(recipe.preset, options, tokens)
    if options.events_only:
        mapper = EventsOnly(mapper)
    if recipe.window is not None:
        mapper = WindowedMapper(recipe.window, mapper)
    return mapper


__all__ = ["MapperRecipe", "MappingDocument", "build_mapper"]
