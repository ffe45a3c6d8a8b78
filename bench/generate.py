"""Realistic Segment exports (NDJSON, one message a line), the same bytes for the same
arguments.

    python -m bench.generate --count 1000000 --seed 7 --gzip --out events.ndjson.gz

The mix, by message: half identify (about ten traits: email, name, phone, plan, ISO
dates with and without milliseconds, a date-only birthday, a nested address with a date
inside, numbers, booleans), 40% track (Order Completed with products, dated properties,
...), the rest page and screen, a few group and alias, and 3% `Delete User` track
events. Users come from a pool, so identities repeat; each user keeps
its email, phone and device from message to message. Envelopes carry what Segment's
exports carry: messageId, anonymousId, userId, timestamp, sentAt, receivedAt, context.

`--skew F` gives that share of messages to one user (a heavy identity: a test account, a
server-side integration), drawn on top of the pool; never its deletions, which stay with
the pool. A profile's writes and deletions reach CleverTap in input order, so each
deletion of one profile between its writes costs two round trips one after the other: a
heavy identity deleted in 3% of its messages (900 times in 300,000 messages) would be a
chain of 1,800 round trips, which no sender can shorten.

`--bad-share F` turns that share of messages into records a real export also holds:
identify without userId, a line cut short, a phone without `+`, a 150-character userId.

Everything is streamed: memory stays flat whatever `--count`. The output depends only on
the arguments (a seeded `random.Random`, gzip written without a time or file name).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import gzip
import itertools
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from random import Random
from typing import IO, Any, Final

import orjson

DEFAULT_COUNT: Final = 1_000_000
DEFAULT_SEED: Final = 20240501
GZIP_LEVEL: Final = 6
WRITE_CHUNK: Final = 2000  # lines joined per write

# Message kinds and their shares (bad records are drawn on top, by --bad-share).
IDENTIFY: Final = "identify"
TRACK: Final = "track"
PAGE: Final = "page"
SCREEN: Final = "screen"
DELETE_USER: Final = "delete_user"
GROUP: Final = "group"
ALIAS: Final = "alias"
MIX: Final[tuple[tuple[str, float], ...]] = (
    (IDENTIFY, 0.50),
    (TRACK, 0.372),
    (PAGE, 0.05),
    (SCREEN, 0.04),
    (GROUP, 0.004),
    (ALIAS, 0.004),
    (DELETE_USER, 0.03),  # issue 20's end-to-end targets: "about 3% Delete User events"
)
MIX_VERSION: Final = 2
"""Part of a cached export's name (bench.run): a file of another mix is never reused."""

# Bad records (--bad-share), drawn evenly.
BAD_NO_USER_ID: Final = "bad:identify-without-userId"
BAD_MALFORMED: Final = "bad:malformed-line"
BAD_PHONE: Final = "bad:phone-without-plus"
BAD_LONG_IDENTITY: Final = "bad:identity-150-chars"
BAD_KINDS: Final = (BAD_NO_USER_ID, BAD_MALFORMED, BAD_PHONE, BAD_LONG_IDENTITY)

START_MS: Final = 1_714_521_600_000  # 2024-05-01T00:00:00Z: the export's first event
SPAN_MS: Final = 7 * 86_400_000  # the export covers a week
DAY_MS: Final = 86_400_000
ANONYMOUS_SHARE: Final = 0.12  # track/page/screen from visitors who never signed in
_MASK32: Final = 0xFFFFFFFF
_MASK128: Final = (1 << 128) - 1

FIRST_NAMES: Final = (
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Elijah", "Sophia", "James", "Isabella", "Lucas",
    "Mia", "Mateo", "Amelia", "Aarav", "Priya", "Wei", "Yuki", "Hannah", "Lukas", "Chloe",
    "Diego", "Fatima", "Omar", "Sara", "Jonas", "Lea", "Ines", "Arjun", "Ananya", "Kenji",
    "Zoe", "Ethan", "Grace", "Leo", "Nora", "Hugo", "Maya", "Felix", "Aisha", "Ravi",
)  # fmt: skip
LAST_NAMES: Final = (
    "Smith", "Johnson", "Garcia", "Miller", "Davis", "Martinez", "Lopez", "Wilson", "Anderson",
    "Thomas", "Moore", "Martin", "Lee", "Walker", "Hall", "Young", "King", "Wright", "Scott",
    "Nguyen", "Patel", "Sharma", "Kumar", "Chen", "Wang", "Tanaka", "Sato", "Müller",
    "Schmidt", "Fischer", "Dubois", "Rossi", "Silva", "Santos", "Kowalski", "Novak", "Ivanova",
)  # fmt: skip
EMAIL_DOMAINS: Final = (
    "gmail.com", "yahoo.com", "outlook.com", "icloud.com", "hotmail.com", "proton.me",
    "example.com", "acme.io", "globex.com", "initech.co",
)  # fmt: skip
PLANS: Final = ("free", "free", "free", "starter", "pro", "pro", "business", "enterprise")
CITIES: Final = (
    ("San Francisco", "CA", "US", "941"), ("New York", "NY", "US", "100"),
    ("Austin", "TX", "US", "787"), ("Seattle", "WA", "US", "981"),
    ("Chicago", "IL", "US", "606"), ("London", "", "GB", "EC1"),
    ("Berlin", "", "DE", "101"), ("Bengaluru", "KA", "IN", "560"),
    ("Toronto", "ON", "CA", "M5V"), ("Sydney", "NSW", "AU", "200"),
)  # fmt: skip
# (country code, digits after it), realistic mobile numbers.
PHONE_SHAPES: Final = (("1", 10), ("1", 10), ("1", 10), ("44", 10), ("49", 11), ("91", 10))
US_AREA_CODES: Final = ("415", "212", "512", "206", "312", "646", "650", "408", "617", "303")

WEB_USER_AGENTS: Final = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36",
)
LOCALES: Final = ("en-US", "en-US", "en-GB", "de-DE", "fr-FR", "en-IN", "ja-JP", "pt-BR")
IOS_MODELS: Final = ("iPhone15,2", "iPhone15,3", "iPhone14,5", "iPhone16,1", "iPad13,4")
ANDROID_MODELS: Final = (
    ("Google", "Pixel 8"), ("samsung", "SM-S918B"), ("samsung", "SM-A546B"),
    ("OnePlus", "CPH2449"), ("Xiaomi", "2211133G"),
)  # fmt: skip

PRODUCT_NAMES: Final = (
    "Monopoly: 3rd Edition", "Uno Card Game", "Trail Running Shoes", "Merino Wool Socks",
    "Espresso Machine", "Ceramic Pour-Over", "Noise Cancelling Headphones", "USB-C Charger",
    "Yoga Mat", "Water Bottle 750ml", "Linen Shirt", "Leather Wallet", "Desk Lamp",
    "Mechanical Keyboard", "Wireless Mouse", "Backpack 28L", "Rain Jacket", "Sunglasses",
    "Cookbook: Salt Fat Acid Heat", "Board Game: Catan",
)  # fmt: skip
CATEGORIES: Final = ("Games", "Footwear", "Kitchen", "Electronics", "Fitness", "Apparel", "Books")
BRANDS: Final = ("Hasbro", "Mattel", "Acme", "Globex", "Initech", "Umbrella", "Stark")
CURRENCIES: Final = ("USD", "USD", "USD", "EUR", "GBP", "INR")
PAGES: Final = (
    ("Home", "/", "Acme: tools for makers"),
    ("Pricing", "/pricing", "Pricing | Acme"),
    ("Docs", "/docs/getting-started", "Getting started | Acme Docs"),
    ("Blog", "/blog/2024/04/segment-to-clevertap", "From Segment to CleverTap | Acme Blog"),
    ("Product", "/products/espresso-machine", "Espresso Machine | Acme Store"),
    ("Cart", "/cart", "Your cart | Acme Store"),
    ("Checkout", "/checkout", "Checkout | Acme Store"),
    ("Sign Up", "/signup", "Create your account | Acme"),
)
REFERRERS: Final = (
    "", "https://www.google.com/", "https://www.bing.com/", "https://t.co/",
    "https://news.ycombinator.com/", "https://www.linkedin.com/",
)  # fmt: skip
SCREENS: Final = (
    "Home", "Search", "Product Detail", "Cart", "Checkout", "Order Confirmation",
    "Settings", "Profile", "Onboarding Step 2",
)  # fmt: skip
TRACK_EVENTS: Final[tuple[tuple[str, float], ...]] = (
    ("Product Viewed", 0.22),
    ("Product Added", 0.12),
    ("Products Searched", 0.10),
    ("Signed In", 0.10),
    ("Cart Viewed", 0.07),
    ("Checkout Started", 0.07),
    ("Order Completed", 0.08),
    ("Subscription Started", 0.04),
    ("Trial Started", 0.03),
    ("Video Playback Started", 0.06),
    ("Coupon Applied", 0.03),
    ("Email Link Clicked", 0.05),
    ("Feature Used", 0.03),
)
SEARCH_QUERIES: Final = (
    "espresso", "running shoes", "board games", "usb c charger", "rain jacket women",
    "gift ideas", "keyboard", "yoga", "linen", "catan",
)  # fmt: skip
COMPANIES: Final = (
    ("Acme Inc", "Manufacturing"), ("Globex", "Energy"), ("Initech", "Software"),
    ("Umbrella Corp", "Pharmaceuticals"), ("Stark Industries", "Defense"),
    ("Wayne Enterprises", "Conglomerate"), ("Hooli", "Technology"), ("Pied Piper", "Software"),
)  # fmt: skip


def _pick(table: tuple[tuple[str, float], ...]) -> tuple[tuple[str, ...], list[float]]:
    names = tuple(name for name, _ in table)
    cumulative = list(itertools.accumulate(share for _, share in table))
    cumulative[-1] = 1.0  # no gap from rounding
    return names, cumulative


_KINDS, _KIND_CUMULATIVE = _pick(MIX)
_EVENTS, _EVENT_CUMULATIVE = _pick(TRACK_EVENTS)


def _mix32(value: int, salt: int) -> int:
    """A cheap, well-spread 32-bit hash of a user number: per-user traits without a table."""
    value = ((value ^ salt) * 0x9E3779B1) & _MASK32
    value ^= value >> 15
    value = (value * 0x85EBCA77) & _MASK32
    return value ^ (value >> 13)


def _uuid(bits: int) -> str:
    text = f"{bits & _MASK128:032x}"
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-{text[16:20]}-{text[20:]}"


class _Clock:
    """ISO-8601 strings from epoch milliseconds; dates are cached (there are few)."""

    def __init__(self) -> None:
        self._dates: dict[int, str] = {}
        self._epoch = date(1970, 1, 1)

    def _date(self, day: int) -> str:
        text = self._dates.get(day)
        if text is None:
            text = (self._epoch + timedelta(days=day)).isoformat()
            self._dates[day] = text
        return text

    def iso_ms(self, ms: int) -> str:
        """`2024-05-01T12:34:56.789Z`: what Segment's libraries send."""
        day, rest = divmod(ms, DAY_MS)
        seconds, milli = divmod(rest, 1000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        return f"{self._date(day)}T{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}Z"

    def iso_s(self, ms: int, offset: str = "Z") -> str:
        """`2024-05-01T12:34:56Z` (or with an offset such as `+00:00`): no milliseconds."""
        day, rest = divmod(ms, DAY_MS)
        minutes, second = divmod(rest // 1000, 60)
        hour, minute = divmod(minutes, 60)
        return f"{self._date(day)}T{hour:02d}:{minute:02d}:{second:02d}{offset}"

    def date_only(self, ms: int) -> str:
        return self._date(ms // DAY_MS)


class _User:
    """What stays the same for one user across messages, derived from its number."""

    __slots__ = (
        "anonymous_id",
        "context",
        "created_at",
        "h",
        "mobile",
        "traits_base",
        "user_id",
    )

    def __init__(self, number: int, salt: int, clock: _Clock, contexts: _Contexts) -> None:
        h = _mix32(number, salt)
        g = _mix32(number, salt ^ 0x5BD1E995)
        self.h = h
        self.user_id = f"usr_{(number * 2654435761 + salt) & _MASK32:08x}{g & 0xFFFF:04x}"
        self.anonymous_id = _uuid((h << 96) | (g << 64) | (number * 0x9E3779B97F4A7C15))
        platform = h % 10
        self.mobile = platform >= 6  # 60% web, 20% iOS, 20% Android
        self.context = contexts.for_user(h, g, ios=platform in (6, 7), mobile=self.mobile)
        first = FIRST_NAMES[h % len(FIRST_NAMES)]
        last = LAST_NAMES[(h >> 6) % len(LAST_NAMES)]
        domain = EMAIL_DOMAINS[(g >> 3) % len(EMAIL_DOMAINS)]
        city, _state, country, postal = CITIES[(g >> 7) % len(CITIES)]
        # Signed up in the three years before the export; some libraries send
        # milliseconds, some do not, a few send an explicit offset.
        created_ms = START_MS - (g % (3 * 365 * DAY_MS // 1000)) * 1000 - (h % 1000)
        style = (h >> 20) % 8
        if style < 4:
            self.created_at = clock.iso_ms(created_ms)
        elif style < 7:
            self.created_at = clock.iso_s(created_ms)
        else:
            self.created_at = clock.iso_s(created_ms, "+00:00")
        birthday_ms = -(20 * 365 * DAY_MS) + (g % (50 * 365)) * DAY_MS  # 1950..2000
        self.traits_base: dict[str, Any] = {
            "email": f"{first}.{last}{number % 1000}@{domain}".lower(),
            "name": f"{first} {last}",
            "phone": _phone(h, g),
            "createdAt": self.created_at,
            "birthday": clock.date_only(birthday_ms),
            "address": {
                "city": city,
                "postalCode": f"{postal}{g % 100:02d}",
                "country": country,
                "verifiedAt": clock.iso_s(created_ms + (h % 30) * DAY_MS),
            },
        }


def _phone(h: int, g: int) -> str:
    country, digits = PHONE_SHAPES[(h >> 11) % len(PHONE_SHAPES)]
    if country == "1":
        area = US_AREA_CODES[(g >> 5) % len(US_AREA_CODES)]
        return f"+1{area}555{g % 10000:04d}"
    number = f"{(h * 31 + g) % 10**digits:0{digits}d}"
    return f"+{country}7{number[1:]}" if country == "44" else f"+{country}{number}"


class _Contexts:
    """A fixed pool of Segment `context` objects; a user keeps the same one."""

    POOL = 256

    def __init__(self, rng: Random) -> None:
        self.web = [self._web(rng) for _ in range(self.POOL)]
        self.ios = [self._ios(rng, with_token=i % 3 == 0) for i in range(self.POOL)]
        self.android = [self._android(rng, with_token=i % 3 == 0) for i in range(self.POOL)]

    def for_user(self, h: int, g: int, *, ios: bool, mobile: bool) -> dict[str, Any]:
        pool = (self.ios if ios else self.android) if mobile else self.web
        return pool[(h ^ g) % self.POOL]

    @staticmethod
    def _ip(rng: Random) -> str:
        return ".".join(
            str(rng.randrange(lo, hi)) for lo, hi in ((24, 223), (0, 256), (0, 256), (1, 255))
        )

    def _web(self, rng: Random) -> dict[str, Any]:
        return {
            "ip": self._ip(rng),
            "library": {"name": "analytics.js", "version": "next-1.66.0"},
            "userAgent": rng.choice(WEB_USER_AGENTS),
        }

    def _ios(self, rng: Random, *, with_token: bool) -> dict[str, Any]:
        device: dict[str, Any] = {
            "id": _uuid(rng.getrandbits(128)).upper(),
            "manufacturer": "Apple",
            "model": rng.choice(IOS_MODELS),
            "type": "ios",
        }
        if with_token:
            device["token"] = f"{rng.getrandbits(256):064x}"
        return {
            "device": device,
            "ip": self._ip(rng),
            "library": {"name": "analytics-ios", "version": "4.1.8"},
            "locale": rng.choice(LOCALES),
            "os": {"name": "iOS", "version": rng.choice(("17.4.1", "17.3", "16.7.7"))},
        }

    def _android(self, rng: Random, *, with_token: bool) -> dict[str, Any]:
        manufacturer, model = rng.choice(ANDROID_MODELS)
        device: dict[str, Any] = {
            "id": f"{rng.getrandbits(64):016x}",
            "manufacturer": manufacturer,
            "model": model,
            "type": "android",
        }
        if with_token:
            device["token"] = f"f{rng.getrandbits(120):030x}:APA91b{rng.getrandbits(200):050x}"
        return {
            "device": device,
            "ip": self._ip(rng),
            "library": {"name": "com.segment.analytics.kotlin", "version": "1.15.0"},
            "locale": rng.choice(LOCALES),
            "os": {"name": "Android", "version": rng.choice(("14", "13", "12"))},
        }


class SegmentExport:
    """The messages of one generated export, as NDJSON lines.

    `users` is the size of the identity pool (default: a tenth of `count`, so a user
    shows up about ten times). `counts` tallies what `lines()` produced, by kind.
    """

    def __init__(
        self,
        count: int = DEFAULT_COUNT,
        *,
        seed: int = DEFAULT_SEED,
        bad_share: float = 0.0,
        users: int | None = None,
        skew: float = 0.0,
    ) -> None:
        if count < 0:
            raise ValueError(f"count must not be negative, not {count}")
        if not 0.0 <= bad_share <= 1.0:
            raise ValueError(f"bad share must be between 0 and 1, not {bad_share}")
        if not 0.0 <= skew <= 1.0:
            raise ValueError(f"skew must be between 0 and 1, not {skew}")
        self.skew = skew
        self.count = count
        self.seed = seed
        self.bad_share = bad_share
        self.users = users if users is not None else max(50, count // 10)
        self.counts: Counter[str] = Counter()

    def lines(self) -> Iterator[bytes]:
        """Every line, with its `\\n`, in order."""
        rng = Random(self.seed)
        clock = _Clock()
        contexts = _Contexts(Random(self.seed ^ 0xC0FFEE))
        salt = rng.getrandbits(32)
        products = _products(Random(self.seed ^ 0xBADC0DE))
        builders = _Builders(rng, clock, products)
        user_cache: dict[int, _User] = {}
        random = rng.random
        dumps = orjson.dumps
        append_newline = orjson.OPT_APPEND_NEWLINE
        counts = self.counts
        count, pool, bad_share, skew = self.count, self.users, self.bad_share, self.skew
        step = SPAN_MS / count if count else 0.0

        def user(number: int) -> _User:
            # A small cache: building a user costs a few microseconds, and users repeat.
            found = user_cache.get(number)
            if found is None:
                if len(user_cache) >= 4096:
                    user_cache.clear()
                found = user_cache[number] = _User(number, salt, clock, contexts)
            return found

        for index in range(count):
            sent_ms = START_MS + int(index * step)
            kind = _KINDS[bisect.bisect(_KIND_CUMULATIVE, random())]
            number = int(random() * pool)
            if skew and kind == DELETE_USER:  # never the heavy identity (see --skew)
                number = number or 1
            elif skew and random() < skew:  # (no extra draw without skew: the same bytes)
                number = 0
            someone = user(number)
            if bad_share and random() < bad_share:
                bad = BAD_KINDS[int(random() * len(BAD_KINDS))]
                counts[bad] += 1
                yield builders.bad(bad, someone, sent_ms)
                continue
            counts[kind] += 1
            message = builders.by_kind[kind](someone, sent_ms)
            yield dumps(message, option=append_newline)


def _products(rng: Random) -> list[dict[str, Any]]:
    catalog = []
    for number, name in enumerate(PRODUCT_NAMES):
        catalog.append(
            {
                "product_id": f"{rng.getrandbits(48):012x}",
                "sku": f"{name[:3].upper()}-{number:04d}",
                "name": name,
                "price": round(rng.uniform(4, 350), 2),
                "category": CATEGORIES[number % len(CATEGORIES)],
                "brand": BRANDS[number % len(BRANDS)],
            }
        )
    return catalog


class _Builders:
    """One function per message kind: a Segment message as a dict."""

    def __init__(self, rng: Random, clock: _Clock, products: list[dict[str, Any]]) -> None:
        self.rng = rng
        self.clock = clock
        self.products = products
        self.by_kind: dict[str, Callable[[_User, int], dict[str, Any]]] = {
            IDENTIFY: self.identify,
            TRACK: self.track,
            PAGE: self.page,
            SCREEN: self.screen,
            GROUP: self.group,
            ALIAS: self.alias,
            DELETE_USER: self.delete_user,
        }

    def _envelope(
        self, kind: str, someone: _User, sent_ms: int, *, signed_in: bool = True
    ) -> dict[str, Any]:
        """The fields every message has. Timestamps: the event happened a little before it
        was sent (batched by the library) and was received a little after."""
        random = self.rng.random
        event_ms = sent_ms - int(random() * 3000)
        iso = self.clock.iso_ms
        timestamp = iso(event_ms)
        if someone.mobile:
            message_id = _uuid(self.rng.getrandbits(128)).upper()
        else:
            message_id = f"ajs-next-{self.rng.getrandbits(128):032x}"
        message: dict[str, Any] = {
            "anonymousId": someone.anonymous_id,
            "context": someone.context,
            "messageId": message_id,
            "receivedAt": iso(sent_ms + 20 + int(random() * 400)),
            "sentAt": iso(sent_ms),
            "timestamp": timestamp,
            "type": kind,
        }
        if signed_in:
            message["userId"] = someone.user_id
        return message

    def identify(self, someone: _User, sent_ms: int) -> dict[str, Any]:
        random = self.rng.random
        message = self._envelope(IDENTIFY, someone, sent_ms)
        traits = dict(someone.traits_base)
        traits["plan"] = PLANS[int(random() * len(PLANS))]
        traits["logins"] = 1 + int(random() * 400)
        traits["lifetimeValue"] = round(random() * 2500, 2)
        traits["newsletter"] = random() < 0.4
        if random() < 0.5:
            # A backend identify: analytics-node, no device.
            message["context"] = _SERVER_CONTEXT
            traits["lastSeenAt"] = self.clock.iso_ms(sent_ms - int(random() * DAY_MS))
        message["traits"] = traits
        return message

    def track(self, someone: _User, sent_ms: int) -> dict[str, Any]:
        random = self.rng.random
        message = self._envelope(TRACK, someone, sent_ms, signed_in=random() >= ANONYMOUS_SHARE)
        event = _EVENTS[bisect.bisect(_EVENT_CUMULATIVE, random())]
        message["event"] = event
        message["properties"] = self._properties(event, sent_ms)
        if event in _SERVER_SIDE_EVENTS or random() < 0.1:
            message["context"] = _SERVER_CONTEXT  # sent from the backend (analytics-node)
        return message

    def _properties(self, event: str, sent_ms: int) -> dict[str, Any]:
        random = self.rng.random
        products = self.products
        product = products[int(random() * len(products))]
        if event in ("Product Viewed", "Product Added"):
            properties = dict(product)
            properties["currency"] = "USD"
            if event == "Product Added":
                properties["quantity"] = 1 + int(random() * 3)
                properties["cart_id"] = f"{self.rng.getrandbits(40):010x}"
            return properties
        if event == "Order Completed":
            items = []
            total = 0.0
            for _ in range(1 + int(random() * 3)):
                item = dict(products[int(random() * len(products))])
                item["quantity"] = 1 + int(random() * 2)
                total += item["price"] * item["quantity"]
                items.append(item)
            shipping = 0.0 if total > 50 else 4.99
            return {
                "order_id": f"ORD-{self.rng.getrandbits(36):09X}",
                "checkout_id": f"{self.rng.getrandbits(40):010x}",
                "total": round(total + shipping, 2),
                "revenue": round(total, 2),
                "shipping": shipping,
                "tax": round(total * 0.08, 2),
                "currency": CURRENCIES[int(random() * len(CURRENCIES))],
                "coupon": "SPRING24" if random() < 0.2 else None,
                "products": items,
                "placedAt": self.clock.iso_ms(sent_ms - 2000),
            }
        if event in ("Cart Viewed", "Checkout Started"):
            return {
                "cart_id": f"{self.rng.getrandbits(40):010x}",
                "value": round(random() * 400, 2),
                "currency": "USD",
                "items": 1 + int(random() * 5),
            }
        if event == "Products Searched":
            return {"query": SEARCH_QUERIES[int(random() * len(SEARCH_QUERIES))]}
        if event == "Signed In":
            return {"method": "password" if random() < 0.7 else "google", "remember": True}
        if event in ("Subscription Started", "Trial Started"):
            starts = sent_ms - int(random() * 60_000)
            return {
                "plan": PLANS[3 + int(random() * 5)],
                "billing_cycle": "monthly" if random() < 0.7 else "annual",
                "startedAt": self.clock.iso_ms(starts),
                "trialEndsAt": self.clock.iso_s(starts + 14 * DAY_MS),
                "seats": 1 + int(random() * 20),
            }
        if event == "Video Playback Started":
            return {
                "session_id": f"{self.rng.getrandbits(32):08x}",
                "content_asset_id": f"vid_{int(random() * 5000):05d}",
                "position": int(random() * 300),
                "total_length": 300 + int(random() * 1200),
                "livestream": False,
            }
        if event == "Coupon Applied":
            return {"coupon_id": "SPRING24", "coupon_name": "Spring sale", "discount": 10}
        if event == "Email Link Clicked":
            return {
                "campaign": "weekly-digest-2024-18",
                "link_url": "https://acme.io/blog",
                "sentAt": self.clock.iso_s(sent_ms - 3 * DAY_MS),
            }
        return {"feature": "export", "first_time": random() < 0.1}

    def page(self, someone: _User, sent_ms: int) -> dict[str, Any]:
        random = self.rng.random
        message = self._envelope(PAGE, someone, sent_ms, signed_in=random() >= ANONYMOUS_SHARE)
        if someone.mobile:
            message["context"] = _WEB_FALLBACK
        name, path, title = PAGES[int(random() * len(PAGES))]
        message["name"] = name
        message["properties"] = {
            "path": path,
            "referrer": REFERRERS[int(random() * len(REFERRERS))],
            "search": "",
            "title": title,
            "url": f"https://acme.io{path}",
        }
        return message

    def screen(self, someone: _User, sent_ms: int) -> dict[str, Any]:
        random = self.rng.random
        message = self._envelope(SCREEN, someone, sent_ms, signed_in=random() >= ANONYMOUS_SHARE)
        if not someone.mobile:
            message["context"] = _MOBILE_FALLBACK
        name = SCREENS[int(random() * len(SCREENS))]
        message["name"] = name
        message["properties"] = {"name": name, "previous": SCREENS[0]}
        return message

    def group(self, someone: _User, sent_ms: int) -> dict[str, Any]:
        message = self._envelope(GROUP, someone, sent_ms)
        number = someone.h % 500
        company, industry = COMPANIES[number % len(COMPANIES)]
        message["groupId"] = f"grp_{number:04d}"
        message["traits"] = {
            "name": f"{company} #{number}",
            "industry": industry,
            "employees": 10 + number * 7,
            "plan": PLANS[number % len(PLANS)],
            "createdAt": self.clock.iso_s(START_MS - number * DAY_MS),
        }
        return message

    def alias(self, someone: _User, sent_ms: int) -> dict[str, Any]:
        message = self._envelope(ALIAS, someone, sent_ms)
        message["previousId"] = someone.anonymous_id
        return message

    def delete_user(self, someone: _User, sent_ms: int) -> dict[str, Any]:
        message = self._envelope(TRACK, someone, sent_ms)
        message["context"] = _SERVER_CONTEXT
        message["event"] = "Delete User"
        message["properties"] = {"reason": "user request (GDPR art. 17)"}
        return message

    def bad(self, kind: str, someone: _User, sent_ms: int) -> bytes:
        """A record a real export also holds, which ctsync must report and not send."""
        if kind == BAD_MALFORMED:
            line = orjson.dumps(self.track(someone, sent_ms))
            return line[: len(line) // 2] + b"\n"  # a line cut short
        message = self.identify(someone, sent_ms)
        if kind == BAD_NO_USER_ID:
            del message["userId"]
        elif kind == BAD_PHONE:
            message["traits"]["phone"] = message["traits"]["phone"].lstrip("+")
        else:
            message["userId"] = f"{someone.user_id}-" + "x" * (149 - len(someone.user_id))
        return orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE)


_SERVER_CONTEXT: Final[dict[str, Any]] = {"library": {"name": "analytics-node", "version": "6.2.0"}}
_MOBILE_FALLBACK: Final[dict[str, Any]] = {
    "device": {
        "id": "5f2b1c0e9d8a7b6c",
        "manufacturer": "Google",
        "model": "Pixel 8",
        "type": "android",
    },
    "ip": "198.51.100.23",
    "library": {"name": "com.segment.analytics.kotlin", "version": "1.15.0"},
    "locale": "en-US",
    "os": {"name": "Android", "version": "14"},
}
_SERVER_SIDE_EVENTS: Final = frozenset({"Order Completed", "Subscription Started", "Trial Started"})
_WEB_FALLBACK: Final[dict[str, Any]] = {
    "ip": "203.0.113.7",
    "library": {"name": "analytics.js", "version": "next-1.66.0"},
    "userAgent": WEB_USER_AGENTS[3],
}


def write(export: SegmentExport, out: IO[bytes], *, compress: bool = False) -> int:
    """Write every line of `export` to `out` (gzipped when `compress`); return the bytes
    of NDJSON written (before compression)."""
    with contextlib.ExitStack() as stack:
        sink: IO[bytes] | gzip.GzipFile = out
        if compress:
            # No time and no file name in the header: the same arguments, the same bytes.
            sink = stack.enter_context(
                gzip.GzipFile(
                    filename="", fileobj=out, mode="wb", compresslevel=GZIP_LEVEL, mtime=0
                )
            )
        written = 0
        lines = export.lines()
        while chunk := list(itertools.islice(lines, WRITE_CHUNK)):
            data = b"".join(chunk)
            written += len(data)
            sink.write(data)
    return written


@dataclass(frozen=True, slots=True)
class Generated:
    """What `generate_file` wrote: messages by kind, and the NDJSON size before gzip."""

    counts: Counter[str]
    size: int


def generate_file(
    path: Path,
    count: int = DEFAULT_COUNT,
    *,
    seed: int = DEFAULT_SEED,
    bad_share: float = 0.0,
    compress: bool = False,
    skew: float = 0.0,
) -> Generated:
    """Write an export to `path` (atomically: a partial file never has the final name)."""
    export = SegmentExport(count, seed=seed, bad_share=bad_share, skew=skew)
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "wb") as out:
        size = write(export, out, compress=compress)
    partial.replace(path)
    return Generated(export.counts, size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.generate",
        description="Write a realistic, deterministic Segment export (NDJSON).",
    )
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="messages to write")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="same seed, same bytes")
    parser.add_argument("--gzip", action="store_true", help="gzip the output")
    parser.add_argument("--out", type=Path, help="output file (default: stdout)")
    parser.add_argument(
        "--bad-share",
        type=float,
        default=0.0,
        help="share of bad records (no userId, cut lines, phone without +, long identity)",
    )
    parser.add_argument(
        "--skew", type=float, default=0.0, help="share of messages from one heavy user"
    )
    args = parser.parse_args(argv)
    if args.count < 0 or not 0.0 <= args.bad_share <= 1.0 or not 0.0 <= args.skew <= 1.0:
        parser.error("--count must be >= 0, --bad-share and --skew between 0 and 1")
    started = time.perf_counter()
    if args.out is None:
        export = SegmentExport(args.count, seed=args.seed, bad_share=args.bad_share, skew=args.skew)
        size = write(export, sys.stdout.buffer, compress=args.gzip)
        counts, where = export.counts, "stdout"
    else:
        generated = generate_file(
            args.out,
            args.count,
            seed=args.seed,
            bad_share=args.bad_share,
            compress=args.gzip,
            skew=args.skew,
        )
        counts, size, where = generated.counts, generated.size, str(args.out)
    elapsed = time.perf_counter() - started
    mix = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
    print(
        f"wrote {args.count} messages ({size / max(args.count, 1):.0f} bytes each on average)"
        f" to {where} in {elapsed:.1f}s: {mix}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
