"""A message without a timestamp is sent at "now", read from the one clock every mapper
takes from its options (`MappingOptions.clock`): the presets and mapping files alike."""

from __future__ import annotations

import pytest

from ctsync.mapping import build_mapper, parse_mapping, preset_as_mapping
from ctsync.presets import MappingOptions, Preset, build_preset
from ctsync.records import Mapper, Upload

NOW = 1_700_000_000.75  # floored to whole seconds


def mappers(options: MappingOptions) -> dict[str, Mapper]:
    return {
        "actions preset": build_preset(Preset.ACTIONS, options),
        "classic preset": build_preset(Preset.CLASSIC, options),
        "actions as a mapping file": build_mapper(
            parse_mapping(preset_as_mapping("actions")), options
        ),
        "classic as a mapping file": build_mapper(
            parse_mapping(preset_as_mapping("classic")), options
        ),
    }


@pytest.mark.parametrize("name", list(mappers(MappingOptions())))
def test_a_message_without_timestamp_is_sent_at_the_clocks_now(name: str) -> None:
    mapper = mappers(MappingOptions(clock=lambda: NOW))[name]
    result = mapper({"type": "identify", "userId": "u1", "traits": {"plan": "pro"}})
    assert isinstance(result, list)
    (upload,) = result
    assert isinstance(upload, Upload)
    assert upload.record["ts"] == 1_700_000_000


def test_the_clock_is_not_part_of_what_options_compare() -> None:
    assert MappingOptions(clock=lambda: NOW) == MappingOptions()
