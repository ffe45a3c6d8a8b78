"""Presets: ready-made mappers named on the command line with `--preset`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ctsync.records import Mapper
from ctsync.timestamps import DatesAs


class Nested(StrEnum):
    """What to do with nested objects and arrays in event properties."""

    DROP = "drop"
    STRINGIFY = "stringify"
    FLATTEN = "flatten"


@dataclass(frozen=True, slots=True, kw_only=True)
class MappingOptions:
    """Settings every mapper honours."""

    convert_timestamps: bool = True
    dates_as: DatesAs = DatesAs.UNIX
    nested: Nested = Nested.FLATTEN
    max_event_properties: int = 256
    # Also convert date-times finer than milliseconds (floored to seconds); Segment's rule
    # leaves them as text, and so does ctsync unless asked (`--convert-microseconds`).
    convert_microseconds: bool = False
    # Classic preset: an identify with userId and anonymousId goes to the anonymous
    # profile (objectId) with Identity set, linking it to the user (`--link-anonymous`).
    link_anonymous: bool = False


class Preset(StrEnum):
    ACTIONS = "actions"  # Segment's CleverTap (Actions) destination presets
    CLASSIC = "classic"  # Segment's classic CleverTap destination


def build_preset(preset: Preset, options: MappingOptions) -> Mapper:
    """The mapper of a named preset."""
    factories: dict[Preset, Callable[[MappingOptions], Mapper]] = {
        Preset.ACTIONS: _actions,
        Preset.CLASSIC: _classic,
    }
    return factories[preset](options)


def _actions(options: MappingOptions) -> Mapper:
    from ctsync.presets.actions import actions_mapper

    return actions_mapper(options)


def _classic(options: MappingOptions) -> Mapper:
    from ctsync.presets.classic import classic_mapper

    return classic_mapper(options)
