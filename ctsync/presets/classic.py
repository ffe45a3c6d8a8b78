"""The behaviour of Segment's classic (cloud-mode) CleverTap destination.

| Segment message          | CleverTap record                                          |
|--------------------------|-----------------------------------------------------------|
| identify                 | profile: special traits renamed, others snake_cased       |
| track                    | event named after `event`, properties snake_cased         |
| track `Order Completed`  | `Charged` with `Charged ID`, `Amount`, `Currency`, `Items`|
| page / screen            | `Web Page Viewed` / `App Screen Viewed`                   |
| alias                    | profile of `previousId` (as objectId) given `Identity`    |
| `context.device.token`   | a token record, once per device token and profile per run|
| group                    | skipped                                                   |

Identifier: `userId` as `identity`; with no userId, the `anonymousId` as `objectId` (cloud
mode uses it as the CleverTap ID). Nested event properties follow `--nested`; what is
left out is counted in the mapper's `dropped` counter (see `ctsync.mapping.properties`).

Alias: CleverTap's upload takes one identifier per record, so the alias cannot name both
ids. ctsync uploads the profile whose CleverTap ID is `previousId` (the anonymousId the
classic destination used as objectId) with the standard `Identity` key set to `userId`:
the anonymous profile gains the identity, and later uploads by `userId` reach it.

Token records need an objectId: a message with a device token but no anonymousId, or a
`context.device.type` other than android/ios, gives no token record.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Final

from ctsync.mapping.properties import PropertyShaper
from ctsync.presets import MappingOptions
from ctsync.presets.actions import identity_of, record_time
from ctsync.records import (
    CleverTapRecord,
    Invalid,
    MapResult,
    Message,
    Operation,
    Skip,
    Upload,
    skip_reason,
)
from ctsync.timestamps import convert_object, event_time, iso_to_epoch

# Special traits (compared after snake_casing) -> CleverTap standard profile keys.
SPECIAL_TRAITS: Final = {
    "name": "Name",
    "birthday": "DOB",
    "avatar": "Photo",
    "gender": "Gender",
    "phone": "Phone",
    "email": "Email",
}
GENDERS: Final = {"male": "M", "m": "M", "female": "F", "f": "F"}
TOKEN_TYPES: Final = {"android": "fcm", "ios": "apns"}
PAGE_EVENT: Final = "Web Page Viewed"
SCREEN_EVENT: Final = "App Screen Viewed"
ORDER_COMPLETED: Final = "Order Completed"
CHARGED: Final = "Charged"
ORDER_FIELDS: Final = frozenset({"order_id", "revenue", "total", "currency", "products"})


def normalise_gender(value: Any) -> Any:
    """`male`/`female`/`m`/`f` in any case -> `M`/`F`; anything else unchanged."""
    if isinstance(value, str):
        return GENDERS.get(value.strip().lower(), value)
    return value


def clevertap_date(value: Any) -> Any:
    """A date as CleverTap's date type `$D_<epoch>`; a value that is not a date unchanged."""
    if isinstance(value, str):
        epoch = iso_to_epoch(value)
        return value if epoch is None else f"$D_{epoch}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return value
        return f"$D_{event_time(value)}"
    return value


class ClassicMapper:
    """The mapper for `--preset classic`. `dropped` counts the values left out."""

    def __init__(self, options: MappingOptions) -> None:
        self._options = options
        self._shaper = PropertyShaper(options.nested, snake_case_keys=True)
        self._tokens_sent: set[tuple[str, str]] = set()

    @property
    def dropped(self) -> Counter[str]:
        return self._shaper.dropped

    def __call__(self, message: Message) -> MapResult:
        kind = message.get("type")
        result: CleverTapRecord | Invalid
        if kind == "identify":
            result = self._profile(message)
        elif kind == "track":
            result = self._track(message)
        elif kind == "page":
            result = self._viewed(message, PAGE_EVENT)
        elif kind == "screen":
            result = self._viewed(message, SCREEN_EVENT)
        elif kind == "alias":
            result = self._alias(message)
        else:  # group, and anything Segment's classic destination did not take
            return Skip(skip_reason(message))
        if isinstance(result, Invalid):
            return result
        ops: list[Operation] = [Upload(result)]
        token = self._token(message)
        if token is not None:
            ops.append(Upload(token))
        return ops

    def _identified(self, message: Message, kind: str) -> CleverTapRecord | Invalid:
        """A record of `kind` carrying the message's identifier and `ts`."""
        record: CleverTapRecord = {"type": kind}
        user_id = message.get("userId")
        if user_id is None or user_id == "":
            object_id = identity_of(message.get("anonymousId"), "userId or anonymousId")
            if isinstance(object_id, Invalid):
                return object_id
            record["objectId"] = object_id
        else:
            identity = identity_of(user_id, "userId")
            if isinstance(identity, Invalid):
                return identity
            record["identity"] = identity
        ts = record_time(message)
        if isinstance(ts, Invalid):
            return ts
        record["ts"] = ts
        return record

    def _profile(self, message: Message) -> CleverTapRecord | Invalid:
        record = self._identified(message, "profile")
        if isinstance(record, Invalid):
            return record
        traits = message.get("traits")
        record["profileData"] = self._profile_data(traits if isinstance(traits, dict) else {})
        return record

    def _profile_data(self, traits: dict[str, Any]) -> dict[str, Any]:
        options = self._options
        custom: dict[str, Any] = {}
        standard: dict[str, Any] = {}
        for key, value in traits.items():
            target = SPECIAL_TRAITS.get(self._shaper.rename(key))
            if target is None:
                custom[key] = value
            elif value is None:
                continue  # an unset special trait: sending null would fail CleverTap's checks
            elif target == "Gender":
                standard[target] = normalise_gender(value)
            elif target == "DOB":
                standard[target] = clevertap_date(value) if options.convert_timestamps else value
            else:
                standard[target] = value
        if options.convert_timestamps:
            custom = convert_object(custom, options.dates_as)
        profile = self._shaper.profile_data(custom)
        profile.update(standard)
        return profile

    def _event(
        self, message: Message, name: str, properties: dict[str, Any]
    ) -> CleverTapRecord | Invalid:
        record = self._identified(message, "event")
        if isinstance(record, Invalid):
            return record
        if self._options.convert_timestamps:
            properties = convert_object(properties, self._options.dates_as)
        record["evtName"] = name
        record["evtData"] = self._shaper.event_data(properties)
        return record

    def _track(self, message: Message) -> CleverTapRecord | Invalid:
        name = message.get("event")
        if not isinstance(name, str) or not name.strip():
            return Invalid("509", "track has no event name")
        properties = _properties(message)
        if name == ORDER_COMPLETED:
            return self._charged(message, properties)
        return self._event(message, name, properties)

    def _charged(self, message: Message, properties: dict[str, Any]) -> CleverTapRecord | Invalid:
        # Segment's e-commerce spec names, found whatever their case (`orderId`, `order_id`).
        spec: dict[str, Any] = {}
        rest: dict[str, Any] = {}
        for key, value in properties.items():
            name = self._shaper.rename(key)
            if name in ORDER_FIELDS and name not in spec:
                spec[name] = value
            else:
                rest[key] = value
        charged: dict[str, Any] = {}
        if "order_id" in spec:
            charged["Charged ID"] = spec["order_id"]
        amount_key = "revenue" if spec.get("revenue") is not None else "total"
        if spec.get(amount_key) is not None:
            charged["Amount"] = spec.pop(amount_key)
        if "currency" in spec:
            charged["Currency"] = spec["currency"]
        if "total" in spec:  # kept as a property when revenue is the Amount
            rest["total"] = spec["total"]
        record = self._event(message, CHARGED, rest)
        if isinstance(record, Invalid):
            return record
        data = record["evtData"]
        data.update(charged)
        products = spec.get("products")
        if isinstance(products, list):
            # More than 50 Items is left to the data rules: a validation error, not a cut.
            data["Items"] = [self._item(product) for product in products]
        elif products is not None:
            self._shaper.dropped["products"] += 1
        return record

    def _item(self, product: Any) -> Any:
        if not isinstance(product, dict):
            return product  # the data rules report a non-object item
        if self._options.convert_timestamps:
            product = convert_object(product, self._options.dates_as)
        return self._shaper.event_data(product)

    def _viewed(self, message: Message, name: str) -> CleverTapRecord | Invalid:
        properties = _properties(message)
        page_name = message.get("name")
        if page_name is not None:
            properties = {**properties, "name": page_name}
        return self._event(message, name, properties)

    def _alias(self, message: Message) -> CleverTapRecord | Invalid:
        identity = identity_of(message.get("userId"), "userId")
        if isinstance(identity, Invalid):
            return identity
        previous = identity_of(message.get("previousId"), "previousId")
        if isinstance(previous, Invalid):
            return Invalid("526", previous.message)
        ts = record_time(message)
        if isinstance(ts, Invalid):
            return ts
        return {
            "type": "profile",
            "objectId": previous,
            "ts": ts,
            "profileData": {"Identity": identity},
        }

    def _token(self, message: Message) -> CleverTapRecord | None:
        context = message.get("context")
        device = context.get("device") if isinstance(context, dict) else None
        if not isinstance(device, dict):
            return None
        token = device.get("token")
        device_type = device.get("type")
        object_id = message.get("anonymousId")
        if not (isinstance(token, str) and token and isinstance(device_type, str)):
            return None
        if not isinstance(object_id, str) or not object_id:
            return None
        token_type = TOKEN_TYPES.get(device_type.lower())
        if token_type is None:
            return None
        key = (object_id, token)
        if key in self._tokens_sent:
            return None
        self._tokens_sent.add(key)
        return {
            "type": "token",
            "objectId": object_id,
            "tokenData": {"id": token, "type": token_type},
        }


def _properties(message: Message) -> dict[str, Any]:
    properties = message.get("properties")
    return properties if isinstance(properties, dict) else {}


def classic_mapper(options: MappingOptions) -> ClassicMapper:
    """The mapper for `--preset classic` (a `Mapper` with a `dropped` counter)."""
    return ClassicMapper(options)
