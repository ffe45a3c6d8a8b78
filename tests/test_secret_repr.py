"""The passcode never shows in the repr or str of an object that holds it: a debugger, a
log line or an assertion message prints these objects whole."""

from __future__ import annotations

import dataclasses

import pytest

from ctsync.api import DeleteJob, UploadJob
from ctsync.records import Origin
from ctsync.settings import ClientSettings, Secret
from tests.helpers import PASSCODE


def holders(settings: ClientSettings) -> dict[str, object]:
    """Every settings and job object that can hold the passcode, and a container of each."""
    objects: dict[str, object] = {
        "Secret": settings.passcode,
        "ClientSettings": settings,
        "UploadJob": UploadJob(paths=["export.ndjson"], client=settings),
        "DeleteJob": DeleteJob(identities=[(Origin("--identity", 1), "u1")], client=settings),
    }
    objects["a list of them"] = list(objects.values())
    objects["asdict(ClientSettings)"] = dataclasses.asdict(settings)
    return objects


@pytest.mark.parametrize(
    "show", [repr, str, "{!r}".format, "{}".format], ids=["repr", "str", "r", "format"]
)
@pytest.mark.parametrize(
    "name",
    [
        "Secret",
        "ClientSettings",
        "UploadJob",
        "DeleteJob",
        "a list of them",
        "asdict(ClientSettings)",
    ],
)
def test_no_object_that_holds_the_passcode_shows_it(
    settings: ClientSettings, name: str, show: object
) -> None:
    assert callable(show)
    text = show(holders(settings)[name])
    assert PASSCODE not in text
    assert PASSCODE[:6] not in text  # not even a part of it


def test_the_secret_still_holds_the_passcode(settings: ClientSettings) -> None:
    """The mask is only in how it shows: the value sent is the passcode."""
    assert settings.passcode.reveal() == PASSCODE
    assert Secret(f"  {PASSCODE}\n") == settings.passcode
