"""Mapping files: Segment-style subscriptions that replace the presets (`--mapping FILE`).

    mapping_file = load_mapping("mapping.json")    # MappingError if anything is wrong
    mapper = build_mapper(mapping_file, MappingOptions())
    result = mapper(message)                       # list of operations, Skip or Invalid
    dropped_values(mapper)                         # Counter of values --nested left out
    dates_left_as_text(mapper)                     # Counter of date-times finer than ms

Modules: `triggers` (the trigger language), `directives` (@path, @template, @if,
@literal), `file` (loading and checking), `mapper` (actions to records), `presets` (the
presets as mapping files), `properties` (snake_case and the nested policy), `cli`.
"""

from ctsync.mapping.directives import MISSING, DirectiveError, compile_value
from ctsync.mapping.file import (
    MAX_SUBSCRIPTIONS,
    Action,
    MappingError,
    MappingFile,
    Subscription,
    load_mapping,
    parse_mapping,
)
from ctsync.mapping.mapper import MappingMapper, build_mapper
from ctsync.mapping.presets import PresetName, preset_as_mapping
from ctsync.mapping.properties import (
    PropertyShaper,
    dates_left_as_text,
    dropped_values,
    mapping_notes,
    snake_case,
)
from ctsync.mapping.triggers import TriggerSyntaxError, compile_trigger

__all__ = [
    "MAX_SUBSCRIPTIONS",
    "MISSING",
    "Action",
    "DirectiveError",
    "MappingError",
    "MappingFile",
    "MappingMapper",
    "PresetName",
    "PropertyShaper",
    "Subscription",
    "TriggerSyntaxError",
    "build_mapper",
    "compile_trigger",
    "compile_value",
    "dates_left_as_text",
    "dropped_values",
    "load_mapping",
    "mapping_notes",
    "parse_mapping",
    "preset_as_mapping",
    "snake_case",
]
