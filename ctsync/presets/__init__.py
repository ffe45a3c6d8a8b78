"""Presets: ready-made mappers named on the command line with `--preset`."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from ctsync.options import MappingOptions, Nested
from ctsync.records import CountingMapper, TokenKey

__all__ = ["MappingOptions", "Nested", "Preset", "build_preset"]


class Preset(StrEnum):
    ACTIONS = "actions"  # Segment's CleverTap (Actions) destination presets
    CLASSIC = "classic"  # Segment's classic CleverTap destination


def build_preset(
    preset: Preset, options: MappingOptions, tokens: set[TokenKey] | None = None
) -> CountingMapper:
    """The mapper of a named preset. `tokens` is the run's set of device tokens sent
    (each goes once per run); a new set when None."""
    factories: dict[Preset, Callable[[MappingOptions, set[TokenKey] | None], CountingMapper]] = {
        Preset.ACTIONS: _actions,
        Preset.CLASSIC: _classic,
    }
    return factories[preset](options, tokens)


def _actions(options: MappingOptions, tokens: set[TokenKey] | None) -> CountingMapper:
    from ctsync.presets.actions import actions_mapper

    return actions_mapper(options)  # it sends no device token


def _classic(options: MappingOptions, tokens: set[TokenKey] | None) -> CountingMapper:
    from ctsync.presets.classic import ClassicMapper

    return ClassicMapper(options, tokens_sent=tokens)
