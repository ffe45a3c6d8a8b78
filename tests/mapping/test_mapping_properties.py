"""snake_case keys and the nested policy shared by the classic preset and mapping files."""

from __future__ import annotations

import pytest

from ctsync.mapping import PropertyShaper, dropped_values, snake_case
from ctsync.presets import Nested


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Industry Of Traits", "industry_of_traits"),  # Segment's own examples
        ("favoriteColor", "favorite_color"),
        ("order_id", "order_id"),
        ("OrderID", "order_id"),
        ("HTMLTitle", "html_title"),
        ("utm-source", "utm_source"),
        ("page.url", "page_url"),
        ("address1", "address1"),
        ("  padded  ", "padded"),
        ("Größe", "größe"),
        ("$$$", "$$$"),
    ],
)
def test_snake_case(key: str, expected: str) -> None:
    assert snake_case(key) == expected


def test_profile_keeps_arrays_of_scalars_as_multi_value() -> None:
    shaper = PropertyShaper(Nested.FLATTEN)
    data = {"langs": ["en", "de"], "pets": [{"name": "Rex"}], "home": {"city": "Oslo"}}
    assert shaper.profile_data(data) == {
        "langs": ["en", "de"],
        "pets_0_name": "Rex",
        "home_city": "Oslo",
    }


def test_stringify_falls_back_for_values_orjson_cannot_write() -> None:
    shaper = PropertyShaper(Nested.STRINGIFY)
    assert shaper.event_data({"big": [2**70]}) == {"big": f"[{2**70}]"}


def test_dropped_values_of_a_mapper_without_a_counter_is_empty() -> None:
    assert dropped_values(lambda message: []) == {}
