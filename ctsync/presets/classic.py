"""The behaviour of Segment's classic (cloud-mode) CleverTap destination.

| Segment message          | CleverTap record                                          |
|--------------------------|-----------------------------------------------------------|
| identify                 | profile: special traits renamed, others snake_cased       |
| track                    | event named after `event`, properties snake_cased         |
| track `Order Completed`  | `Charged` with `Charged ID`, `Amount`, `Currency`, `Items`|
|   (any case)             |   beside the source properties (`products` aside)         |
| track `Charged`          | `Charged`: `Charged ID`, `Amount`, `Currency`, `Items` as |
|   (any case)             |   written (CleverTap's own form), other properties as any |
| page / screen            | `Web Page Viewed` / `App Screen Viewed`                   |
| alias                    | profile of `previousId` (as objectId) given `Identity`    |
| `context.device.token`   | a token record, once per device token and profile per run|
| group                    | skipped                                                   |

Identifier: `userId` as `identity`; with no userId, the `anonymousId` as `objectId` (cloud
mode uses it as the CleverTap ID). Nested event properties follow `--nested`; what is
left out is counted in the mapper's `dropped` counter (see `ctsync.mapping.properties`).

Profiles: CleverTap's reserved keys (`MSG-email`, ..., `category-unsubscribe`) and a
trait whose value is one operation object (`{"$incr": 1}`) are sent exactly as written,
key and value, as CleverTap's API requires: to act on a property this preset writes
plain values to, name the trait as it is sent (`login_count`, not `loginCount`).
`Name` is made from first and last names when there is no name (Segment's identify spec).
CleverTap's standard keys written as CleverTap spells them (`Employed`, `DOB`, ...) are
sent as written, for the data rules to check. `DOB` (from `birthday` or `DOB`) is read as
a date from the forms people write (`ctsync.timestamps.date_epoch`) and sent as `$D_`;
one that cannot be read goes as written, and the data rules refuse it (`dob-not-a-date`).

Alias: CleverTap's upload takes one identifier per record, so the alias cannot name both
ids. ctsync uploads the profile whose CleverTap ID is `previousId` (the anonymousId the
classic destination used as objectId) with the standard `Identity` key set to `userId`:
the anonymous profile gains the identity, and later uploads by `userId` reach it. With
`link_anonymous` an identify carrying both ids does the same.

Token records need an objectId: the anonymousId, or for an alias without one its
`previousId` (the profile the alias is sent to). A message with a device token but no
such id, a device type other than android or an Apple platform, or a token that is not
text gives no token record; it is counted in `dropped` as `token:no-objectId`,
`token:unknown-device-type` or `token:not-a-string`.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from ctsync.mapping.properties import PropertyShaper
from ctsync.options import MappingOptions, identity_of, is_blank, record_time
from ctsync.records import (
    CleverTapRecord,
    Counters,
    Invalid,
    MapResult,
    Message,
    Operation,
    SentTokens,
    Skip,
    TokenUpload,
    Upload,
    skip_reason,
)
from ctsync.rules import RESERVED_PROFILE_KEYS, STANDARD_PROFILE_KEYS, normalise_gender
from ctsync.timestamps import FineDates, clevertap_date, convert_object

__all__ = ["ClassicMapper", "classic_mapper", "clevertap_date", "normalise_gender"]

# Special traits (compared after snake_casing) -> CleverTap standard profile keys.
SPECIAL_TRAITS: Final = {
    "name": "Name",
    "birthday": "DOB",
    "avatar": "Photo",
    "gender": "Gender",
    "phone": "Phone",
    "email": "Email",
}
NAME_PARTS: Final = ("first_name", "last_name")  # firstName, first_name, FirstName ...
# CleverTap's standard profile keys written as CleverTap spells them (`Employed`, `DOB`):
# sent as written, for the data rules to check as CleverTap does. (The reserved keys,
# MSG-email and the like, are the property shaper's: kept as written too.)
STANDARD_AS_WRITTEN: Final = STANDARD_PROFILE_KEYS - RESERVED_PROFILE_KEYS
# `context.device.type` (else `context.os.name`), lower-cased -> CleverTap token type.
# Every Apple platform's push token is an APNs token.
TOKEN_TYPES: Final = {
    "android": "fcm",
    "ios": "apns",
    "ipados": "apns",
    "watchos": "apns",
    "tvos": "apns",
    "macos": "apns",
    "visionos": "apns",
}
TOKEN_WITHOUT_OBJECT_ID: Final = "token:no-objectId"
TOKEN_OF_UNKNOWN_DEVICE: Final = "token:unknown-device-type"
TOKEN_NOT_A_STRING: Final = "token:not-a-string"
PAGE_EVENT: Final = "Web Page Viewed"
SCREEN_EVENT: Final = "App Screen Viewed"
ORDER_COMPLETED: Final = "order completed"  # compared lower-cased, as RudderStack does
CHARGED: Final = "Charged"
ORDER_FIELDS: Final = frozenset({"order_id", "revenue", "total", "currency", "products"})
# The keys of CleverTap's own Charged event, as CleverTap spells them (clevertap-api.md):
# a track named `Charged` that carries them is sent with them as written.
CHARGED_FIELDS: Final = ("Charged ID", "Amount", "Currency", "Items")


def order_amount(products: Any) -> int | float | None:
    """The sum of price times quantity over `products` (quantity 1 when absent), or None
    when it cannot be known: no products, or one without a numeric price or quantity.
    Summed in decimal, so 19.99 x 3 is 59.97, not 59.970000000000006."""
    if not isinstance(products, list) or not products:
        return None
    total = Decimal(0)
    exact = True  # every price and quantity an integer: the Amount stays one
    for product in products:
        if not isinstance(product, dict):
            return None
        price, quantity = product.get("price"), product.get("quantity", 1)
        if not (_is_number(price) and _is_number(quantity)):
            return None
        exact = exact and isinstance(price, int) and isinstance(quantity, int)
        try:
            total += Decimal(repr(price)) * Decimal(repr(quantity))
        except InvalidOperation:  # inf, nan
            return None
    if not total.is_finite():
        return None
    return int(total) if exact else float(total)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class ClassicMapper:
    """The mapper for `--preset classic`. `dropped` counts the values left out;
    `dates_left_as_text` the date-times finer than milliseconds left unconverted."""

    def __init__(
        self, options: MappingOptions, *, tokens_sent: set[tuple[str, str]] | None = None
    ) -> None:
        self._options = options
        self._shaper = PropertyShaper(options.nested, snake_case_keys=True)
        # For what CleverTap defines and the user wrote in its form (Charged Items):
        # the same nested policy, keys kept; its drops counted with the others.
        self._as_written = PropertyShaper(options.nested)
        self._as_written.dropped = self._shaper.dropped
        self._fine = FineDates(convert=options.convert_microseconds)
        # The counters themselves (read at the end of a run), not copies.
        self.counters = Counters(
            dropped=self._shaper.dropped, dates_left_as_text=self._fine.left_as_text
        )
        self.dropped: Counter[str] = self.counters.dropped
        self.dates_left_as_text: Counter[str] = self.counters.dates_left_as_text
        # (objectId, token) pairs sent this run; `tokens_sent` is the run's set.
        self.tokens = SentTokens(tokens_sent)

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
            ops.append(token)
        return ops

    def _identified(self, message: Message, kind: str) -> CleverTapRecord | Invalid:
        """A record of `kind` carrying the message's identifier and `ts`."""
        record: CleverTapRecord = {"type": kind}
        user_id = message.get("userId")
        if user_id is None or is_blank(user_id):  # then the anonymousId, as Segment does
            object_id = identity_of(message.get("anonymousId"), "userId or anonymousId")
            if isinstance(object_id, Invalid):
                return object_id
            record["objectId"] = object_id
        else:
            identity = identity_of(user_id, "userId")
            if isinstance(identity, Invalid):
                return identity
            record["identity"] = identity
        ts = record_time(message.get("timestamp"), self._options.clock)
        if isinstance(ts, Invalid):
            return ts
        record["ts"] = ts
        return record

    def _profile(self, message: Message) -> CleverTapRecord | Invalid:
        record = self._identified(message, "profile")
        if isinstance(record, Invalid):
            return record
        traits = message.get("traits")
        data = self._profile_data(traits if isinstance(traits, dict) else {})
        if self._options.link_anonymous and "identity" in record:
            # The anonymous profile earlier events created (objectId = anonymousId)
            # becomes the user's: sent to it, with the identity set (RudderStack's
            # "object ID mapping").
            anonymous = identity_of(message.get("anonymousId"), "anonymousId")
            if not isinstance(anonymous, Invalid):
                data["Identity"] = record.pop("identity")
                record = {"type": "profile", "objectId": anonymous, "ts": record["ts"]}
        record["profileData"] = data
        return record

    def _profile_data(self, traits: dict[str, Any]) -> dict[str, Any]:
        options = self._options
        custom: dict[str, Any] = {}
        standard: dict[str, Any] = {}
        written: dict[str, Any] = {}  # standard keys written as CleverTap spells them
        parts: dict[str, Any] = {}
        for key, value in traits.items():
            if key in STANDARD_AS_WRITTEN:
                if value is not None:  # null would fail CleverTap's checks, as below
                    # DOB is CleverTap's date, whatever Convert Timestamps says.
                    written[key] = clevertap_date(value) if key == "DOB" else value
                continue
            name = self._shaper.rename(key)
            target = SPECIAL_TRAITS.get(name)
            if target is None:
                custom[key] = value
                if name in NAME_PARTS:
                    parts.setdefault(name, value)
            elif value is None:
                continue  # an unset special trait: sending null would fail CleverTap's checks
            elif target == "Gender":
                standard[target] = normalise_gender(value)
            elif target == "DOB":
                standard[target] = clevertap_date(value)
            else:
                standard[target] = value
        # The key written as CleverTap spells it says what the user meant for CleverTap.
        standard.update(written)
        if "Name" not in standard:
            full_name = _full_name(parts)
            if full_name is not None:
                standard["Name"] = full_name
        if options.convert_timestamps:
            custom = convert_object(custom, options.dates_as, fine=self._fine)
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
            properties = convert_object(properties, self._options.dates_as, fine=self._fine)
        record["evtName"] = name
        record["evtData"] = self._shaper.event_data(properties)
        return record

    def _track(self, message: Message) -> CleverTapRecord | Invalid:
        name = message.get("event")
        if not isinstance(name, str) or not name.strip():
            return Invalid("509", "track has no event name")
        properties = _properties(message)
        lowered = name.lower()
        if lowered == ORDER_COMPLETED:
            return self._charged(message, properties)
        if lowered == CHARGED.lower():
            return self._charged_as_written(message, properties)
        return self._event(message, name, properties)

    def _charged_as_written(
        self, message: Message, properties: dict[str, Any]
    ) -> CleverTapRecord | Invalid:
        """A track already in CleverTap's Charged form: its `Charged ID`, `Amount`,
        `Currency` and `Items` go as written (keys of the items too), the other properties
        as any event's."""
        charged = {key: properties[key] for key in CHARGED_FIELDS if key in properties}
        rest = {key: value for key, value in properties.items() if key not in charged}
        record = self._event(message, CHARGED, rest)
        if isinstance(record, Invalid):
            return record
        items = charged.get("Items")
        if isinstance(items, list):
            charged["Items"] = [self._item(item, as_written=True) for item in items]
        # Anything else under Items (an object, a string) goes as it is, for the data
        # rules to report: a Charged without its items should not pass unseen.
        record["evtData"].update(charged)
        return record

    def _charged(self, message: Message, properties: dict[str, Any]) -> CleverTapRecord | Invalid:
        # Segment's e-commerce spec names, found whatever their case (`orderId`, `order_id`).
        # They stay properties beside the Charged fields made from them, as CleverTap's
        # Segment integrations for Android and iOS keep them, so a report on `total` or
        # `order_id` finds what it found before CleverTap; `products` alone goes, into
        # `Items` (as both integrations do: a copy would be a second, flattened Items).
        spec: dict[str, Any] = {}
        rest: dict[str, Any] = {}
        for key, value in properties.items():
            name = self._shaper.rename(key)
            if name in ORDER_FIELDS and name not in spec:
                spec[name] = value
                if name == "products":
                    continue
            rest[key] = value
        charged: dict[str, Any] = {}
        if "order_id" in spec:
            charged["Charged ID"] = spec["order_id"]
        # Amount is what the customer paid: Segment's `total` (as Segment's analytics.js
        # CleverTap integration takes it), else `revenue`, else the products' sum.
        for field in ("total", "revenue"):
            if spec.get(field) is not None:
                charged["Amount"] = spec[field]
                break
        else:
            amount = order_amount(spec.get("products"))
            if amount is not None:
                charged["Amount"] = amount
        if "currency" in spec:
            charged["Currency"] = spec["currency"]
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

    def _item(self, product: Any, *, as_written: bool = False) -> Any:
        """One of Charged's Items: keys snake_cased like properties, or `as_written`."""
        if not isinstance(product, dict):
            return product  # the data rules report a non-object item
        if self._options.convert_timestamps:
            product = convert_object(product, self._options.dates_as, fine=self._fine)
        return (self._as_written if as_written else self._shaper).event_data(product)

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
        ts = record_time(message.get("timestamp"), self._options.clock)
        if isinstance(ts, Invalid):
            return ts
        return {
            "type": "profile",
            "objectId": previous,
            "ts": ts,
            "profileData": {"Identity": identity},
        }

    def _token(self, message: Message) -> TokenUpload | None:
        """The token record of a message's device token (sent once per device and profile
        per run: `ctsync.prepare`). A token that cannot be sent is counted in `dropped`
        with the reason."""
        context = message.get("context")
        if not isinstance(context, dict):
            return None
        device = context.get("device")
        if not isinstance(device, dict):
            return None
        token = device.get("token")
        if token is None or token == "":
            return None
        if not isinstance(token, str):
            self._shaper.dropped[TOKEN_NOT_A_STRING] += 1
            return None
        # The objectId the message's own records carry (an integer anonymousId as its
        # decimal string), so that the token lands on the same profile.
        anonymous_id = message.get("anonymousId")
        if (anonymous_id is None or anonymous_id == "") and message.get("type") == "alias":
            # An alias names the anonymous id in previousId (the profile it is sent to);
            # aliases sent from servers often carry no anonymousId of their own.
            anonymous_id = message.get("previousId")
        object_id = identity_of(anonymous_id, "anonymousId")
        if isinstance(object_id, Invalid):
            # CleverTap takes tokens by objectId only (530): a server-side message
            # without anonymousId cannot carry one.
            self._shaper.dropped[TOKEN_WITHOUT_OBJECT_ID] += 1
            return None
        device_type = device.get("type")
        if device_type is None:  # Segment's libraries set it; others name the OS
            os = context.get("os")
            device_type = os.get("name") if isinstance(os, dict) else None
        token_type = TOKEN_TYPES.get(device_type.lower()) if isinstance(device_type, str) else None
        if token_type is None:
            self._shaper.dropped[TOKEN_OF_UNKNOWN_DEVICE] += 1
            return None
        data = {"id": token, "type": token_type}
        record = {"type": "token", "objectId": object_id, "tokenData": data}
        return TokenUpload(record, (object_id, token))


def _full_name(parts: dict[str, Any]) -> str | None:
    """`Name` from first and last names, both non-blank strings (Segment's identify spec)."""
    first, last = parts.get("first_name"), parts.get("last_name")
    if isinstance(first, str) and isinstance(last, str) and first.strip() and last.strip():
        return f"{first.strip()} {last.strip()}"
    return None


def _properties(message: Message) -> dict[str, Any]:
    properties = message.get("properties")
    return properties if isinstance(properties, dict) else {}


def classic_mapper(options: MappingOptions) -> ClassicMapper:
    """The mapper for `--preset classic` (a `Mapper` with `dropped` and
    `dates_left_as_text` counters)."""
    return ClassicMapper(options)
