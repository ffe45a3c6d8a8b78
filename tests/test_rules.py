"""CleverTap's data rules, each with the code the server answers (clevertap-api.md)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctsync.rules import Violation, check_upload, fix_upload, profile_operation
from tests.helpers import SUBSCRIPTION_FLAGS, examples


def profile(**data: Any) -> dict[str, Any]:
    return {"type": "profile", "identity": "u1", "ts": 1700000000, "profileData": data}


def event(name: Any = "Product Viewed", **data: Any) -> dict[str, Any]:
    return {"type": "event", "identity": "u1", "ts": 1700000000, "evtName": name, "evtData": data}


def token(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "token",
        "objectId": "a1",
        "tokenData": {"id": "t0k3n", "type": "fcm"},
    }
    record.update(fields)
    return record


def codes(record: dict[str, Any], **kwargs: Any) -> list[str]:
    return [violation.code for violation in check_upload(record, **kwargs)]


def test_valid_records_have_no_violations() -> None:
    assert check_upload(profile(Name="Ada", Email="ada@example.com", Phone="+4915112345678")) == []
    assert check_upload(event(price=9.5, sku="s1", in_stock=True, note=None)) == []
    assert check_upload(token()) == []
    charged = event("Charged", Amount=10, **{"Charged ID": "o1", "Items": [{"sku": "s1"}]})
    assert check_upload(charged) == []


def test_violation_is_a_frozen_value() -> None:
    violation = check_upload(profile(Gender="male"))[0]
    assert violation == Violation("514", violation.message)
    with pytest.raises(AttributeError):
        violation.code = "0"  # type: ignore[misc]


# --- identifiers (523 / 526) and ts (525) ----------------------------------------------


def test_record_without_identifier_is_523() -> None:
    record = profile(Name="Ada")
    del record["identity"]
    assert codes(record) == ["523"]


def test_record_with_two_identifiers_is_523() -> None:
    record = event()
    record["objectId"] = "a1"
    assert codes(record) == ["523"]


@pytest.mark.parametrize("identity", ["", "x" * 120, 42, None, " ", "  ", "\t", " \n "])
def test_identity_empty_blank_too_long_or_not_a_string_is_523(identity: Any) -> None:
    """A blank identity (a userId of spaces) would make one profile of every message
    that has one: the README lists an empty identity under 523, and blank is empty."""
    record = profile()
    record["identity"] = identity
    assert codes(record) == ["523"]


@pytest.mark.parametrize("identity", [" u1", "u1 ", "a b", "\u00a0x"])
def test_an_identity_with_spaces_around_or_inside_is_kept(identity: str) -> None:
    record = profile()
    record["identity"] = identity
    assert codes(record) == []


def test_identity_of_119_characters_is_valid() -> None:
    record = profile()
    record["identity"] = "x" * 119
    assert codes(record) == []


@pytest.mark.parametrize("object_id", ["", 7, None])
def test_bad_object_id_is_526(object_id: Any) -> None:
    record: dict[str, Any] = {"type": "event", "objectId": object_id, "evtName": "Viewed"}
    assert codes(record) == ["526"]


@pytest.mark.parametrize("ts", ["2024-01-01T00:00:00Z", 1.5, True, "1700000000"])
def test_ts_not_integer_epoch_is_525(ts: Any) -> None:
    record = event()
    record["ts"] = ts
    assert codes(record) == ["525"]


def test_ts_may_be_left_out() -> None:
    record = event()
    del record["ts"]
    assert codes(record) == []


def test_unknown_record_type_is_524() -> None:
    assert codes({"type": "user", "identity": "u1"}) == ["524"]


# --- profile values ---------------------------------------------------------------------


@pytest.mark.parametrize("phone", ["+4915112345678", "+14155552671"])
def test_phone_with_country_code_is_valid(phone: str) -> None:
    assert codes(profile(Phone=phone)) == []


@pytest.mark.parametrize("phone", ["015112345678", "+49 151 1234567", "+0123456", 4915112345678])
def test_phone_without_plus_country_number_is_516(phone: Any) -> None:
    assert codes(profile(Phone=phone)) == ["516"]


@pytest.mark.parametrize("gender", ["male", "m", "Female", "O", ""])
def test_gender_other_than_m_or_f_is_514(gender: str) -> None:
    assert codes(profile(Gender=gender)) == ["514"]


@pytest.mark.parametrize("email", ["ada", "ada@", "@example.com", "ada@example", "a b@x.io"])
def test_malformed_email_is_515(email: str) -> None:
    assert codes(profile(Email=email)) == ["515"]


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        ("Employed", "yes", "517"),
        ("Education", "PhD", "518"),
        ("Married", "true", "519"),
        ("Age", "42", "520"),
    ],
)
def test_other_standard_profile_keys(key: str, value: str, code: str) -> None:
    assert codes(profile(**{key: value})) == [code]


@pytest.mark.parametrize("dob", ["$D_636249600", "$D_-631152000", "$D_0"])
def test_a_clevertap_date_is_a_good_dob(dob: str) -> None:
    assert codes(profile(DOB=dob)) == []


@pytest.mark.parametrize(
    "dob",
    # clevertap-api.md: dates as "$D_<epoch seconds>"; a plain integer is stored as a
    # number, text as text: neither is a date of birth.
    ["01-Mar-1990", "1990-03-01", 636249600, "$D_", "$D_1990-03-01", "D_636249600", True, None],
)
def test_a_dob_that_is_not_a_clevertap_date_has_its_own_code(dob: Any) -> None:
    found = check_upload(profile(DOB=dob))
    assert [v.code for v in found] == ["dob-not-a-date"]
    assert "DOB" in found[0].message and "$D_<epoch seconds>" in found[0].message


@pytest.mark.parametrize(
    ("dob", "sent"),
    [
        ("01-Mar-1990", "$D_636249600"),  # 1990-03-01: 7364 days after 1970-01-01
        ("1990/03/01", "$D_636249600"),
        (636249600000, "$D_636249600"),  # milliseconds
        ("13/03/1990", "$D_637286400"),  # 12 days later
    ],
)
def test_fix_sends_a_dob_it_can_read_as_a_date(dob: Any, sent: str) -> None:
    fixed, fixes, left = fix_upload(profile(Name="Ada", DOB=dob))
    assert (fixed, left) == (profile(Name="Ada", DOB=sent), [])
    assert [(fix.field, fix.code) for fix in fixes] == [("DOB", "dob-not-a-date")]
    assert f"sent as {sent!r}" in fixes[0].message


@pytest.mark.parametrize("dob", ["03/01/1990", "31/02/1990", "last spring", "", True, [1990]])
def test_fix_leaves_out_a_dob_it_cannot_read_and_says_so(dob: Any) -> None:
    fixed, fixes, left = fix_upload(profile(Name="Ada", DOB=dob))
    assert (fixed, left) == (profile(Name="Ada"), [])
    assert [(fix.field, fix.code) for fix in fixes] == [("DOB", "dob-not-a-date")]
    assert "left out" in fixes[0].message


def test_standard_keys_do_not_count_as_custom_properties() -> None:
    custom = {f"p{i}": i for i in range(256)}
    assert codes(profile(Name="Ada", Email="a@b.co", **custom)) == []
    assert codes(profile(**custom, extra=1)) == ["512"]


@pytest.mark.parametrize("char", list("%><!|&.:;$'\"\\#"))
def test_profile_key_with_forbidden_character_is_rejected(char: str) -> None:
    assert codes(profile(**{f"a{char}b": 1})) == ["512"]


def test_profile_key_over_120_characters_is_rejected() -> None:
    assert codes(profile(**{"k" * 120: 1})) == []
    assert codes(profile(**{"k" * 121: 1})) == ["512"]


def test_string_values_are_limited_to_512_bytes_not_characters() -> None:
    assert codes(profile(bio="a" * 512)) == []
    assert codes(profile(bio="a" * 513)) == ["512"]
    assert codes(profile(bio="é" * 256)) == []  # 512 bytes
    assert codes(profile(bio="é" * 257)) == ["512"]  # 514 bytes, 257 characters
    assert codes(event(note="€" * 171)) == ["512"]  # 513 bytes


def test_profile_data_must_be_an_object() -> None:
    record = profile()
    record["profileData"] = ["a"]
    assert codes(record) == ["512"]


# --- events -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "", "   "])
def test_missing_event_name_is_509(name: Any) -> None:
    assert codes(event(name)) == ["509"]


@pytest.mark.parametrize("char", list("%><!|&.:;$'\"\\"))
def test_event_name_with_forbidden_character_is_512(char: str) -> None:
    assert codes(event(f"Bad{char}Name")) == ["512"]


@pytest.mark.parametrize(
    "name",
    [
        "App Launched",
        "Notification Sent",
        "UTM Visited",
        "Stayed",
        "app uninstalled",
        "AppLaunched",
    ],
)
def test_reserved_system_event_is_513_case_and_space_insensitively(name: str) -> None:
    assert codes(event(name)) == ["513"]


def test_event_properties_limit_is_522_and_configurable() -> None:
    data = {f"p{i}": i for i in range(257)}
    assert codes(event(**data)) == ["522"]
    assert codes(event(**{f"p{i}": i for i in range(256)})) == []
    assert codes(event(**{f"p{i}": i for i in range(101)}), max_event_properties=100) == ["522"]


@pytest.mark.parametrize("value", [{"a": 1}, ["a", "b"]])
def test_nested_event_values_are_rejected(value: Any) -> None:
    assert codes(event(tags=value)) == ["512"]


def test_event_property_key_rules() -> None:
    assert codes(event(**{"a.b": 1})) == ["512"]
    assert codes(event(**{"k" * 121: 1})) == ["512"]


def test_charged_items_may_be_an_array_of_flat_objects() -> None:
    items = [{"sku": f"s{i}", "price": i} for i in range(50)]
    assert codes(event("Charged", Items=items)) == []


def test_more_than_50_charged_items_is_rejected() -> None:
    items = [{"sku": f"s{i}"} for i in range(51)]
    assert codes(event("Charged", Items=items)) == ["512"]


def test_charged_items_must_be_flat() -> None:
    assert codes(event("Charged", Items=[{"sku": "s", "tags": ["a"]}])) == ["512"]
    assert codes(event("Charged", Items=["s1"])) == ["512"]


@pytest.mark.parametrize("items", ["s1", 3, True, None, {"sku": "s1"}])
def test_charged_items_that_are_not_a_list_are_rejected(items: Any) -> None:
    # clevertap-api.md: Charged's "Items": [{flat object}, ...]; a scalar is no list.
    found = check_upload(event("Charged", Items=items))
    assert [v.code for v in found] == ["512"]
    assert "Items is not a list" in found[0].message


def test_items_is_only_an_array_on_charged() -> None:
    assert codes(event("Order Viewed", Items=[{"sku": "s"}])) == ["512"]


# --- tokens (530-535) -------------------------------------------------------------------


def test_token_without_object_id_is_530() -> None:
    record = token()
    del record["objectId"]
    assert codes(record) == ["530"]
    record["identity"] = "u1"
    assert codes(record) == ["530"]


def test_token_data_not_an_object_is_531() -> None:
    assert codes(token(tokenData="t0k3n")) == ["531"]


def test_token_without_id_is_532() -> None:
    assert codes(token(tokenData={"type": "fcm"})) == ["532"]


def test_token_id_not_a_string_is_535() -> None:
    assert codes(token(tokenData={"id": 123, "type": "fcm"})) == ["535"]


def test_token_without_type_is_533() -> None:
    assert codes(token(tokenData={"id": "t"})) == ["533"]


def test_token_type_other_than_fcm_apns_gcm_is_534() -> None:
    assert codes(token(tokenData={"id": "t", "type": "android"})) == ["534"]
    assert codes(token(tokenData={"id": "t", "type": "apns"})) == []


def test_several_violations_are_all_reported() -> None:
    record = profile(Gender="x", Email="y")
    record["ts"] = "now"
    assert sorted(codes(record)) == ["514", "515", "525"]


# --- CleverTap's reserved profile keys and operations (clevertap-api.md) ----------------


def test_reserved_keys_are_accepted_and_are_not_custom_properties() -> None:
    reserved = {
        **SUBSCRIPTION_FLAGS,
        "category-unsubscribe": {"email": ["Marketing"], "push": ["Offers"]},
        "category-resubscribe": {"email": ["Newsletter"]},
    }
    custom = {f"p{i}": i for i in range(256)}  # exactly CleverTap's limit
    assert check_upload(profile(**reserved, **custom)) == []


@pytest.mark.parametrize("flag", list(SUBSCRIPTION_FLAGS))
@pytest.mark.parametrize("value", ["false", "yes", 0, 1, None, [True]])
def test_a_subscription_flag_that_is_not_a_boolean_is_512(flag: str, value: Any) -> None:
    found = check_upload(profile(**{flag: value}))
    assert [violation.code for violation in found] == ["512"]
    assert found[0].message.startswith(f"{flag} ") and "true or false" in found[0].message


@pytest.mark.parametrize("key", ["category-unsubscribe", "category-resubscribe"])
@pytest.mark.parametrize(
    "value",
    [
        "Marketing",
        ["Marketing"],
        {"email": "Marketing"},
        {"email": [1]},
        {"email": ["Marketing", None]},
        {"email": {"0": "Marketing"}},
        {"email": ["é" * 257]},  # 514 bytes
    ],
)
def test_a_subscription_category_that_is_not_an_object_of_arrays_of_strings_is_512(
    key: str, value: Any
) -> None:
    found = check_upload(profile(**{key: value}))
    assert [violation.code for violation in found] == ["512"]
    assert found[0].message.startswith(f"{key} ")


def test_subscription_categories_as_clevertap_documents_them_are_valid() -> None:
    categories = {"email": ["Marketing", "Newsletter"], "push": ["Offers"], "sms": []}
    assert check_upload(profile(**{"category-unsubscribe": categories})) == []
    assert check_upload(profile(**{"category-resubscribe": {"email": ["é" * 256]}})) == []


def test_a_bad_subscription_flag_is_never_left_out_by_fix() -> None:
    """Leaving out `MSG-email` would leave a subscription silently unchanged: the record
    is refused even under --validate fix, with the flag's violation first."""
    record = profile(**{"MSG-email": "no", "Gender": "x"})
    sent, fixes, found = fix_upload(record)
    assert sent is record and fixes == []
    assert [violation.code for violation in found] == ["512", "514"]


@pytest.mark.parametrize(
    "operation",
    [
        {"$add": ["a", "b"]},
        {"$add": "a"},
        {"$remove": ["a"]},
        {"$remove": "a"},
        {"$incr": 1},
        {"$incr": 2.5},
        {"$decr": 3},
        {"$delete": 1},
        {"$set": "x"},
    ],
)
def test_profile_operations_are_accepted(operation: dict[str, Any]) -> None:
    assert check_upload(profile(tags=operation)) == []


@pytest.mark.parametrize(
    "operation",
    [
        {"$incr": "1"},
        {"$incr": True},
        {"$decr": None},
        {"$add": [1, 2]},
        {"$add": ["a", None]},
        {"$remove": 5},
        {"$add": {"a": 1}},
    ],
)
def test_profile_operations_with_the_wrong_operand_are_512(operation: dict[str, Any]) -> None:
    found = check_upload(profile(tags=operation))
    assert [violation.code for violation in found] == ["512"]
    assert "tags" in found[0].message


def test_operation_strings_are_limited_to_512_bytes() -> None:
    assert codes(profile(tags={"$add": ["ok", "é" * 257]})) == ["512"]


# --- --validate fix: fix_upload ---------------------------------------------------------
# The cases: phones written `+44 20 7946 0001` and `(415) 555-0007` (516), a
# gender `non-binary` (514). RudderStack drops just the offending field.


def test_a_phone_with_spaces_is_sent_without_them() -> None:
    record = profile(Name="Ada", Phone="+44 20 7946 0001")
    fixed, fixes, left = fix_upload(record)
    assert left == []
    assert fixed == profile(Name="Ada", Phone="+442079460001")
    assert [(fix.field, fix.code) for fix in fixes] == [("Phone", "516")]


@pytest.mark.parametrize(
    ("phone", "sent"),
    [
        ("+1 (415) 555-0007", "+14155550007"),
        ("+1-415-555-0007", "+14155550007"),
        ("+49 [30] 1234567", "+49301234567"),
    ],
)
def test_phone_punctuation_is_removed_first(phone: str, sent: str) -> None:
    fixed, _, left = fix_upload(profile(Phone=phone))
    assert left == []
    assert fixed["profileData"] == {"Phone": sent}


@pytest.mark.parametrize(
    "phone", ["(415) 555-0007", "415 555 0007", "+0 123", "call me", 4155550007]
)
def test_a_phone_that_stays_invalid_is_left_out(phone: Any) -> None:
    record = profile(Name="Ada", Email="ada@example.com", Phone=phone)
    fixed, fixes, left = fix_upload(record)
    assert left == []
    assert fixed == profile(Name="Ada", Email="ada@example.com")
    assert [(fix.field, fix.code) for fix in fixes] == [("Phone", "516")]
    assert record["profileData"]["Phone"] == phone  # the record given is not changed


@pytest.mark.parametrize(("gender", "sent"), [("male", "M"), ("Female", "F"), ("f", "F")])
def test_a_gender_clevertap_would_refuse_is_normalised_first(gender: str, sent: str) -> None:
    fixed, fixes, _ = fix_upload(profile(Gender=gender))
    assert fixed["profileData"] == {"Gender": sent}
    assert [fix.code for fix in fixes] == ["514"]


@pytest.mark.parametrize("gender", ["non-binary", "O", "", None])
def test_another_gender_is_left_out(gender: Any) -> None:
    fixed, fixes, left = fix_upload(profile(Name="Ada", Gender=gender))
    assert (fixed, left) == (profile(Name="Ada"), [])
    assert [(fix.field, fix.code) for fix in fixes] == [("Gender", "514")]


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        ("Email", "ada@", "515"),
        ("Employed", "yes", "517"),
        ("Education", "PhD", "518"),
        ("Married", True, "519"),
        ("Age", "forty", "520"),
    ],
)
def test_other_fixable_fields_are_left_out(key: str, value: Any, code: str) -> None:
    fixed, fixes, left = fix_upload(profile(Name="Ada", **{key: value}))
    assert (fixed, left) == (profile(Name="Ada"), [])
    assert [(fix.field, fix.code) for fix in fixes] == [(key, code)]


def test_several_fixable_fields_give_one_fix_each() -> None:
    record = profile(Name="Ada", Phone="(415) 555-0007", Gender="non-binary", Email="x")
    fixed, fixes, _ = fix_upload(record)
    assert fixed == profile(Name="Ada")
    assert sorted(fix.code for fix in fixes) == ["514", "515", "516"]


@pytest.mark.parametrize(
    "record",
    [
        {**profile(Phone="(415) 555-0007"), "identity": ""},  # 523 never fixable
        {**profile(Phone="(415) 555-0007"), "ts": "2024-01-01"},  # 525 never fixable
        profile(Phone="(415) 555-0007", **{"bad.key": 1}),  # 512 never fixable
        profile(Phone="(415) 555-0007", tags={"$incr": "1"}),
        event("App Launched"),  # 513
        event(None),  # 509
    ],
)
def test_a_record_with_any_unfixable_problem_is_not_fixed(record: dict[str, Any]) -> None:
    fixed, fixes, left = fix_upload(record)
    assert fixed is record
    assert fixes == []
    assert sorted(left, key=repr) == sorted(check_upload(record), key=repr)
    assert left[0].code not in {"514", "515", "516", "517", "518", "519", "520"}, (
        "the code reported is the one that stops the record"
    )


def test_a_valid_record_is_sent_as_it_is() -> None:
    record = profile(Name="Ada", Phone="+442079460001")
    assert fix_upload(record) == (record, [], [])


standard_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=20),
    st.sampled_from(["M", "F", "male", "+44 20 7946 0001", "(415) 555-0007", "a@b.co", "Y"]),
    st.sampled_from(["$D_636249600", "01-Mar-1990", "03/01/1990", "1990/02/30"]),
)


@settings(max_examples=examples(300))
@given(
    data=st.dictionaries(
        st.sampled_from(
            ["Gender", "Email", "Phone", "Employed", "Education", "Married", "Age", "Name", "DOB"]
        ),
        standard_values,
    ),
    custom=st.dictionaries(st.sampled_from(["plan", "visits", "tags"]), st.integers()),
)
def test_a_fixed_record_always_passes_the_rules_and_keeps_every_valid_field(
    data: dict[str, Any], custom: dict[str, Any]
) -> None:
    record = profile(**data, **custom)
    fixed, fixes, left = fix_upload(record)
    assert left == []  # only fixable problems here
    assert check_upload(fixed) == []
    kept = fixed["profileData"]
    assert set(kept) <= set(record["profileData"])
    for key, value in record["profileData"].items():
        if key not in {fix.field for fix in fixes}:
            assert kept[key] == value  # a field that was fine is sent as it was
    assert len({fix.field for fix in fixes}) == len(fixes)


# == Rules mutation testing showed unchecked =============================================
# What `make mutate MUTATE=rules` showed no test above checked. Expectations from
# clevertap-api.md, written by hand.

# -- identifiers: exactly one of identity, objectId, FBID, GPID ------------------------


@pytest.mark.parametrize("identifier", ["FBID", "GPID"])
def test_fbid_and_gpid_are_identifiers(identifier: str) -> None:
    profile = {"type": "profile", identifier: "1234567890", "profileData": {"Name": "Ada"}}
    assert check_upload(profile) == []
    event = {"type": "event", identifier: "1234567890", "evtName": "Signed Up", "evtData": {}}
    assert check_upload(event) == []


@pytest.mark.parametrize("identifier", ["FBID", "GPID"])
def test_fbid_or_gpid_beside_an_identity_is_two_identifiers(identifier: str) -> None:
    record = {"type": "profile", "identity": "u1", identifier: "123", "profileData": {}}
    assert [v.code for v in check_upload(record)] == ["523"]


@pytest.mark.parametrize("identifier", ["identity", "FBID", "GPID"])
def test_a_token_is_identified_by_its_objectid_alone(identifier: str) -> None:
    token = {
        "type": "token",
        "objectId": "__g1",
        identifier: "x",
        "tokenData": {"id": "t", "type": "fcm"},
    }
    assert [v.code for v in check_upload(token)] == ["530"]


@pytest.mark.parametrize("kind", ["fcm", "apns", "gcm"])
def test_the_three_token_types_are_valid(kind: str) -> None:
    token = {"type": "token", "objectId": "__g1", "tokenData": {"id": "t", "type": kind}}
    assert check_upload(token) == []


# -- profile operations: {"$add": [...]}, {"$remove": [...]}, {"$incr": n}, ... --------


@pytest.mark.parametrize(
    "value",
    [
        {"$add": ["a"]},
        {"$remove": ["a"]},
        {"$incr": 1},
        {"$decr": 2},
        {"$delete": 1},
        {"$set": "$D_1136225047"},  # README: "$set" is one of the operations sent as written
    ],
)
def test_each_documented_operator_is_an_operation(value: dict[str, Any]) -> None:
    assert profile_operation(value) == next(iter(value))


# CleverTap's system events (the "System Events" table of docs.clevertap.com/docs/events;
# clevertap-api.md names five of them as examples): raising one is refused with 513,
# whatever its case and spacing.
SYSTEM_EVENTS = [
    "App Installed",
    "App Launched",
    "App Uninstalled",
    "Notification Sent",
    "Notification Viewed",
    "Notification Clicked",
    "Push Impressions",
    "UTM Visited",
    "Stayed",
    "Session Concluded",
    "Geocluster Entered",
    "Geocluster Exited",
]


@pytest.mark.parametrize("name", SYSTEM_EVENTS)
def test_a_system_event_cannot_be_raised(name: str) -> None:
    for written in (name, name.upper(), name.replace(" ", "")):
        event = {"type": "event", "identity": "u1", "evtName": written}
        assert [v.code for v in check_upload(event)] == ["513"]


@pytest.mark.parametrize(
    "value", [{"$incr": 1, "$decr": 1}, {"$multiply": 2}, {"incr": 1}, ["$incr"], "$incr", {}]
)
def test_anything_else_is_a_value(value: Any) -> None:
    assert profile_operation(value) is None


def test_standard_keys_do_not_count_toward_the_256_custom_properties() -> None:
    custom: dict[str, Any] = {f"custom_{i}": i for i in range(256)}
    standard: dict[str, Any] = {
        "Name": "Ada",
        "Email": "ada@example.com",
        "Phone": "+4915112345678",
        "Gender": "F",
        "DOB": "$D_631152000",
        "Photo": "https://example.com/ada.png",
        "Employed": "Y",
        "Education": "Graduate",
        "Married": "N",
        "Age": 36,
        "Identity": "u1",
        "MSG-email": True,
    }
    data = {**custom, **standard}
    assert check_upload({"type": "profile", "identity": "u1", "profileData": data}) == []
    one_more = {"type": "profile", "identity": "u1", "profileData": {**data, "custom_256": 1}}
    assert [v.code for v in check_upload(one_more)] == ["512"]


# -- standard profile values: each documented value passes ----------------------------


def profile_without_ts(**data: Any) -> dict[str, Any]:
    """A profile with no `ts` (`profile` above sets one)."""
    return {"type": "profile", "identity": "u1", "profileData": data}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Gender", "M"),
        ("Gender", "F"),
        ("Employed", "Y"),
        ("Employed", "N"),
        ("Education", "School"),
        ("Education", "College"),
        ("Education", "Graduate"),
        ("Married", "Y"),
        ("Married", "N"),
    ],
)
def test_each_documented_value_of_a_standard_key_is_valid(key: str, value: str) -> None:
    # clevertap-api.md: Employed (Y/N), Education (School/College/Graduate), Married (Y/N).
    assert check_upload(profile_without_ts(**{key: value})) == []


def test_an_identity_of_119_characters_is_valid_and_of_120_is_not() -> None:
    # clevertap-api.md: identity "under 120 characters" (523 otherwise).
    assert check_upload({"type": "event", "identity": "u" * 119, "evtName": "E"}) == []
    assert check_upload(profile_without_ts() | {"identity": "u" * 119}) == []
    (violation,) = check_upload(profile_without_ts() | {"identity": "u" * 120})
    assert violation.code == "523"
    # Beside a second identifier, the one reason is the second identifier, not the length.
    (violation,) = check_upload(profile_without_ts() | {"identity": "u" * 119, "GPID": "1"})
    assert violation.message == "identity and GPID: a record carries exactly one identifier"


# -- what each violation tells the user (the report's message) ------------------------
# The report's `message` says what was wrong and what CleverTap takes (the values as
# clevertap-api.md gives them); a broken wording reaches every report.


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        ({"Gender": "X"}, "514", "Gender 'X' is invalid: must be M or F"),
        ({"Email": "ada"}, "515", "Email 'ada' is invalid: must be an email address"),
        (
            {"Phone": "12"},
            "516",
            "Phone '12' is invalid: must be + then country code and number, digits only",
        ),
        ({"Employed": "yes"}, "517", "Employed 'yes' is invalid: must be Y or N"),
        (
            {"Education": "PhD"},
            "518",
            "Education 'PhD' is invalid: must be School, College or Graduate",
        ),
        ({"Married": "no"}, "519", "Married 'no' is invalid: must be Y or N"),
        ({"Age": "old"}, "520", "Age 'old' is invalid: must be a number"),
        ({"MSG-email": "yes"}, "512", "MSG-email 'yes' is invalid: must be true or false"),
        (
            {"category-unsubscribe": "email"},
            "512",
            "category-unsubscribe 'email' is invalid: must be an object of arrays of "
            'category names, like {"email": ["Marketing"]}',
        ),
    ],
)
def test_a_bad_standard_value_says_what_clevertap_takes(
    data: dict[str, Any], code: str, message: str
) -> None:
    (violation,) = check_upload(profile_without_ts(**data))
    assert (violation.code, violation.message) == (code, message)


def token_of(**data: Any) -> dict[str, Any]:
    """A token whose tokenData is exactly `data` (`token` above starts from a valid one)."""
    return {"type": "token", "objectId": "__g1", "tokenData": data}


@pytest.mark.parametrize(
    ("record", "code", "message"),
    [
        ({"type": "user"}, "524", "type 'user' is not profile, event or token"),
        (
            {"type": "profile", "profileData": {}},
            "523",
            "no identifier: one of identity, objectId, FBID, GPID",
        ),
        (
            {"type": "profile", "identity": "u1", "FBID": "1", "profileData": {}},
            "523",
            "identity and FBID: a record carries exactly one identifier",
        ),
        (
            {"type": "profile", "identity": "", "profileData": {}},
            "523",
            "identity must be a string of 1 to 119 characters",
        ),
        (
            {"type": "profile", "objectId": "", "profileData": {}},
            "526",
            "objectId must be a non-empty string",
        ),
        (
            {"type": "profile", "identity": "u1", "ts": "2024-01-01", "profileData": {}},
            "525",
            "ts '2024-01-01' is not integer Unix epoch seconds",
        ),
        (
            {"type": "profile", "identity": "u1", "profileData": {7: "x"}},
            "512",
            "profile key 7 is not a string",
        ),
        (
            {"type": "profile", "identity": "u1", "profileData": {"k" * 121: "x"}},
            "512",
            f"profile key {'k' * 40!r}... is over 120 characters",
        ),
        (
            {"type": "profile", "identity": "u1", "profileData": {"a.b": "x"}},
            "512",
            "profile key 'a.b' has a character CleverTap forbids in keys",
        ),
        (
            {"type": "profile", "identity": "u1", "profileData": {"bio": "é" * 300}},
            "512",
            "value of 'bio' is over 512 bytes",
        ),
        ({"type": "profile", "identity": "u1"}, "512", "profileData is missing or not an object"),
        (
            {"type": "profile", "identity": "u1", "profileData": {f"c{i}": i for i in range(257)}},
            "512",
            "257 custom profile properties; CleverTap allows 256",
        ),
        (
            {"type": "profile", "identity": "u1", "profileData": {"n": {"$incr": "x"}}},
            "512",
            "n: $incr takes a number, not 'x'",
        ),
        (
            {"type": "profile", "identity": "u1", "profileData": {"tags": {"$add": 5}}},
            "512",
            "tags: $add takes a string or an array of strings",
        ),
        ({"type": "event", "identity": "u1"}, "509", "evtName is missing or empty"),
        (
            {"type": "event", "identity": "u1", "evtName": "a.b"},
            "512",
            "event name 'a.b' has a character CleverTap forbids",
        ),
        (
            {"type": "event", "identity": "u1", "evtName": "App Launched"},
            "513",
            "'App Launched' is a CleverTap system event; it cannot be raised",
        ),
        (
            {"type": "event", "identity": "u1", "evtName": "E", "evtData": "x"},
            "512",
            "evtData is not an object",
        ),
        (
            {"type": "event", "identity": "u1", "evtName": "E", "evtData": {"a.b": 1}},
            "512",
            "event property key 'a.b' has a character CleverTap forbids in keys",
        ),
        (
            {"type": "event", "identity": "u1", "evtName": "Charged", "evtData": {"a": {"b": 1}}},
            "512",
            "event property 'a' is nested; values must be scalars",
        ),
        (
            {
                "type": "event",
                "identity": "u1",
                "evtName": "Charged",
                "evtData": {"Items": {"sku": "a"}},
            },
            "512",
            "Charged Items is not a list",
        ),
        (
            {
                "type": "event",
                "identity": "u1",
                "evtName": "Charged",
                "evtData": {"Items": [{}] * 51},
            },
            "512",
            "Charged has 51 Items; keep them at 50 or fewer",
        ),
        (
            {
                "type": "event",
                "identity": "u1",
                "evtName": "Charged",
                "evtData": {"Items": [{"a.b": 1}]},
            },
            "512",
            "Items key 'a.b' has a character CleverTap forbids in keys",
        ),
        (
            {
                "type": "event",
                "identity": "u1",
                "evtName": "Charged",
                "evtData": {"Items": [{"x": [1]}]},
            },
            "512",
            "Charged Items #1 'x' is nested; keep it flat",
        ),
        (
            {"type": "token", "objectId": "", "tokenData": {"id": "t", "type": "fcm"}},
            "530",
            "a token record needs an objectId (the CleverTap ID)",
        ),
        # clevertap-api.md: a token record is {"type":"token","objectId":...,"tokenData":
        # {"id":"<token>","type":"fcm"|"apns"|"gcm"}}; 530-535 say which part is wrong.
        (token_of(id="", type="fcm"), "532", "tokenData has no id"),
        (token_of(type="fcm"), "532", "tokenData has no id"),
        (token_of(id=12345, type="fcm"), "535", "token id 12345 is not a string"),
        (token_of(id="t", type=""), "533", "tokenData has no type"),
        (token_of(id="t"), "533", "tokenData has no type"),
        (token_of(id="t", type="sms"), "534", "token type 'sms' is not fcm, apns or gcm"),
        (
            {"type": "token", "objectId": "__g1", "tokenData": "t"},
            "531",
            "tokenData is missing or not an object",
        ),
        (
            {**token_of(id="t", type="fcm"), "identity": "u1"},
            "530",
            "a token record is identified by objectId alone",
        ),
    ],
)
def test_a_broken_record_says_what_is_wrong(
    record: dict[str, Any], code: str, message: str
) -> None:
    (violation,) = check_upload(record)
    assert (violation.code, violation.message) == (code, message)


def test_too_many_event_properties_says_how_many_and_the_limit() -> None:
    event = {"type": "event", "identity": "u1", "evtName": "E", "evtData": {"a": 1, "b": 2}}
    (violation,) = check_upload(event, max_event_properties=1)
    assert (violation.code, violation.message) == ("522", "2 event properties; the limit is 1")


def test_each_charged_item_that_is_not_an_object_is_named_by_its_position() -> None:
    event = {"type": "event", "identity": "u1", "evtName": "Charged", "evtData": {}}
    event["evtData"] = {"Items": ["x", {"sku": "a"}, 3]}
    assert [(v.code, v.message) for v in check_upload(event)] == [
        ("512", "Charged Items #1 is not an object"),
        ("512", "Charged Items #3 is not an object"),
    ]


# -- --validate fix: survivors of the run over the end of rules.py ----------------------


@pytest.mark.parametrize(("gender", "sent"), [("m", "M"), ("M ", "M"), ("F", "F")])
def test_a_one_letter_gender_is_sent_as_clevertap_writes_it(gender: str, sent: str) -> None:
    record = {"type": "profile", "identity": "u1", "profileData": {"Gender": gender}}
    fixed, _, left = fix_upload(record)
    assert left == []
    assert fixed["profileData"] == {"Gender": sent}


def test_a_fix_says_what_was_sent_or_left_out() -> None:
    record = {
        "type": "profile",
        "identity": "u1",
        "profileData": {"Phone": "+44 20 7946 0001", "Email": "ada@"},
    }
    _, fixes, _ = fix_upload(record)
    assert sorted((fix.field, fix.code, fix.message) for fix in fixes) == [
        ("Email", "515", "Email 'ada@' left out (must be an email address); the rest was sent"),
        ("Phone", "516", "Phone '+44 20 7946 0001' sent as '+442079460001'"),
    ]
