"""The one mapper factory (`ctsync.mappers`) and what every mapper shows: its counters
and the device tokens it asks about (`ctsync.records`)."""

from __future__ import annotations

import pickle
from typing import Any

from ctsync.mappers import MapperRecipe, MappingDocument, build_mapper
from ctsync.mapping import preset_as_mapping
from ctsync.options import MappingOptions, Nested
from ctsync.prepare import Ready, prepare
from ctsync.presets import Preset
from ctsync.records import (
    Counters,
    CountingMapper,
    MapResult,
    Message,
    SentTokens,
    Skip,
    counting,
)
from ctsync.window import Window

DEVICE = {"type": "ios", "token": "tok-1"}


def identify_with_token(user: str) -> Message:
    return {
        "type": "identify",
        "userId": user,
        "anonymousId": f"anon-{user}",
        "timestamp": "2024-05-01T00:00:00Z",
        "traits": {"prefs": {"color": "red"}},
        "context": {"device": DEVICE},
    }


def test_counters_are_taken_once_and_added_elsewhere() -> None:
    here = Counters()
    here.dropped["a"] += 2
    here.untimed["no-timestamp"] += 1
    taken = here.take()
    assert taken == {"dropped": {"a": 2}, "untimed": {"no-timestamp": 1}}
    assert here.take() == {}, "taking clears"
    there = Counters()
    there.add(taken)
    there.add(taken)
    assert there.dropped == {"a": 4} and there.untimed == {"no-timestamp": 2}
    assert not there.dates_left_as_text


def test_sent_tokens_answer_first_time_once_and_report_lookups_when_watched() -> None:
    shared: set[tuple[str, str]] = {("o1", "t1")}
    tokens = SentTokens(shared)
    assert not tokens.first_time(("o1", "t1"))
    lookups = tokens.watch()
    assert tokens.first_time(("o2", "t2"))
    assert not tokens.first_time(("o2", "t2"))
    assert lookups == [(("o2", "t2"), False), (("o2", "t2"), True)]
    assert shared == {("o1", "t1"), ("o2", "t2")}, "the run's set is the one added to"


def test_a_bare_function_counts_nothing() -> None:
    def bare(message: Message) -> MapResult:
        return Skip("x")

    counted = counting(bare)
    assert not isinstance(bare, CountingMapper)
    assert counted({}) == Skip("x")
    assert counted.counters == Counters()


def test_every_recipe_builds_a_counting_mapper_that_survives_pickling() -> None:
    recipes = [
        MapperRecipe(preset=Preset.ACTIONS),
        MapperRecipe(preset=Preset.CLASSIC),
        MapperRecipe(mapping=MappingDocument("m.json", preset_as_mapping("classic"))),
        MapperRecipe(options=MappingOptions(events_only=True), window=Window(since=0)),
    ]
    for recipe in recipes:
        again = pickle.loads(pickle.dumps(recipe))
        mapper = again(set())
        assert isinstance(mapper, CountingMapper)
        assert counting(mapper) is mapper


def test_a_preset_and_its_mapping_file_send_a_token_once_in_the_runs_set() -> None:
    options = MappingOptions(nested=Nested.DROP)
    document = MappingDocument("classic.json", preset_as_mapping("classic"))
    for recipe in (
        MapperRecipe(preset=Preset.CLASSIC, options=options),
        MapperRecipe(mapping=document, options=options),
    ):
        sent: set[tuple[str, str]] = set()
        mapper = build_mapper(recipe, sent)
        first = prepare(identify_with_token("u1"), mapper)
        second = prepare(identify_with_token("u1"), mapper)
        assert isinstance(first, Ready) and isinstance(second, Ready)
        assert len(first.ops) == len(second.ops) + 1, "the token goes once"
        assert sent == {("anon-u1", "tok-1")}


def test_the_preset_counts_what_it_drops_in_its_counters() -> None:
    mapper = build_mapper(
        MapperRecipe(preset=Preset.CLASSIC, options=MappingOptions(nested=Nested.DROP))
    )
    mapper(identify_with_token("u1"))
    mapper(identify_with_token("u2"))
    assert mapper.counters.dropped == {"prefs": 2}


def test_the_window_and_events_only_count_into_the_counters_they_wrap() -> None:
    recipe = MapperRecipe(
        preset=Preset.CLASSIC,
        options=MappingOptions(events_only=True, nested=Nested.DROP),
        window=Window(since=0),
    )
    mapper = build_mapper(recipe)
    untimed: dict[str, Any] = {"type": "track", "event": "E", "userId": "u"}
    assert mapper(untimed) == Skip("outside-window")
    mapper(identify_with_token("u2"))
    counts = mapper.counters.take()
    assert counts["untimed"] == {"no-timestamp": 1}
    assert counts["dropped"]["profile:--events-only"] == 1
