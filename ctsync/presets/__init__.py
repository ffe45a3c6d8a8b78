"""Presets: ready-made mappers named on the command line with `--preset`."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from ctsync.options import MappingOptions, Nested
from ctsync.records import Mapper

__all__ = ["MappingOptions", "Nested", "Preset", "build_preset"]


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
