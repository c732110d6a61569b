"""The sans-I/O parts of the inbound checks (issue 12 §1): DMARC records,
alignment and disposition (pymta.lib.dmarc), Authentication-Results
writing and stripping (pymta.lib.authres), SPF over a fake lookup
(pymta.lib.spf).  The whole path against a real DNS server is
tests/test_authcheck.py."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from pymta.lib import authres, dkimverify, dmarc, spf


def records(table: dict):
    def txt(name: str) -> list[str]:
        found = table.get(name, [])
        if isinstance(found, Exception):
            raise found
        return found

    return txt


# -- DMARC -------------------------------------------------------------------------------------


def test_record_parsing_defaults_and_bad_values():
    tags = dmarc.parse_record("v=DMARC1; p=Reject; pct=50; adkim=s")
    assert (tags["p"], tags["sp"], tags["pct"], tags["adkim"], tags["aspf"]) == ("reject", "reject", "50", "s", "r")
    assert dmarc.parse_record("v=spf1 -all") is None
    assert dmarc.parse_record("p=reject; v=DMARC1") is None  # v= must come first
    assert dmarc.parse_record("v=DMARC1; p=bogus") is None
    assert dmarc.parse_record("v=DMARC1; p=bogus; rua=mailto:d@example.com")["p"] == "none"  # RFC 7489 6.6.3
    assert dmarc.parse_record("v=DMARC1; p=none; pct=500")["pct"] == "100"


def test_organizational_domain_uses_the_public_suffix_list():
    assert dmarc.organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert dmarc.organizational_domain("a.b.example.com.") == "example.com"
    assert dmarc.organizational_domain("co.uk") == "co.uk"


def test_organizational_domain_per_tld_list_agrees_with_the_whole_list():
    """Only the rules of the domain's TLD are handed to publicsuffixlist (start-up cost under
    inetd); for a sample of rules of every kind the answer is the whole list's."""
    from publicsuffixlist import PSLFILE, PublicSuffixList

    whole = PublicSuffixList()
    rules = [line.split()[0] for line in Path(PSLFILE).read_text("utf-8").splitlines() if line and line[0] != "/"]
    names = ["a.b.example.com", "x.y.unknown-tld", "a.b.xn--80aswg.xn--p1ai", "a.www.ck", "a.b.c.kawasaki.jp"]
    for rule in rules[::7]:
        name = rule.lstrip("!").replace("*", "w").encode("idna").decode()
        names += [f"x.{name}", f"a.b.{name}", name]
    for name in names:
        assert dmarc.organizational_domain(name) == (whole.privatesuffix(name) or name), name


def test_two_labels_and_unrelated_domains_need_no_list(monkeypatch):
    def no_list(tld):
        raise AssertionError(f"the list was built for {tld}")

    monkeypatch.setattr(dmarc, "_tld_list", no_list)
    assert dmarc.organizational_domain("co.uk") == "co.uk"  # a public suffix: itself
    assert dmarc.organizational_domain("example.com") == "example.com"
    assert not dmarc.aligned("mail.other.com", "example.com", "r")
    assert dmarc.aligned("EXAMPLE.com.", "example.com", "r")


def test_dkim_field_is_found_without_dkimpy():
    assert dkimverify.has_field(b"From: a\r\nDKIM-Signature : v=1\r\n\r\nbody", b"dkim-signature")
    assert dkimverify.has_field(b"dkim-signature: v=1\n\nbody", b"dkim-signature")
    assert not dkimverify.has_field(b"From: a\r\nX-DKIM-Signature: v=1\r\n\r\n", b"dkim-signature")
    assert not dkimverify.has_field(b"From: a\r\n\tDKIM-Signature: v=1\r\n\r\n", b"dkim-signature")
    assert not dkimverify.has_field(b"From: a\r\n\r\nDKIM-Signature: v=1\r\n", b"dkim-signature")
    assert dkimverify.verify_all(b"From: a\r\n\r\nbody\r\n", lambda name, timeout: None) == []


def test_alignment_relaxed_and_strict():
    assert dmarc.aligned("bounce.example.com", "example.com", "r")
    assert not dmarc.aligned("bounce.example.com", "example.com", "s")
    assert dmarc.aligned("Example.COM", "example.com", "s")
    assert not dmarc.aligned("example.co.uk", "other.co.uk", "r")


def test_pass_by_dkim_alignment_despite_spf_fail():
    txt = records({"_dmarc.example.com": ["v=DMARC1; p=reject"]})
    result = dmarc.evaluate("example.com", txt, "fail", "example.com", ["mail.example.com"])
    assert (result.result, result.policy, result.disposition) == ("pass", "reject", "none")


@pytest.mark.parametrize(("sample", "disposition"), [(0.0, "reject"), (49.9, "reject"), (50.0, "quarantine")])
def test_pct_sampling_downgrades_the_policy(sample, disposition):
    txt = records({"_dmarc.example.com": ["v=DMARC1; p=reject; pct=50"]})
    result = dmarc.evaluate("example.com", txt, "fail", "example.com", [], sample=sample)
    assert (result.result, result.disposition) == ("fail", disposition)


def test_subdomain_policy_from_the_organizational_record():
    txt = records({"_dmarc.example.com": ["v=DMARC1; p=none; sp=quarantine"]})
    sub = dmarc.evaluate("news.example.com", txt, "none", "news.example.com", [])
    assert (sub.result, sub.policy, sub.disposition) == ("fail", "quarantine", "quarantine")
    top = dmarc.evaluate("example.com", txt, "none", "example.com", [])
    assert (top.policy, top.disposition) == ("none", "none")


def test_several_records_mean_none_and_dns_failure_is_temperror():
    two = records({"_dmarc.example.com": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]})
    assert dmarc.evaluate("example.com", two, "fail", "example.com", []).result == "none"
    down = records({"_dmarc.example.com": dmarc.TempFail("timeout")})
    assert dmarc.evaluate("example.com", down, "fail", "example.com", []).result == "temperror"


def test_no_aligned_pass_with_a_temperror_is_never_a_fail():
    txt = records({"_dmarc.example.com": ["v=DMARC1; p=reject"]})
    result = dmarc.evaluate("example.com", txt, "temperror", "example.com", [], temperrors=True)
    assert (result.result, result.disposition) == ("temperror", "none")


def test_no_single_from_domain_is_permerror():
    assert dmarc.evaluate(None, records({}), "pass", "example.com", []).result == "permerror"


# -- Authentication-Results --------------------------------------------------------------------


def test_header_is_folded_one_result_a_line_with_quoted_values():
    field = authres.header(
        "mx.example.org",
        [
            authres.result("spf", "pass", smtp_mailfrom="example.com"),
            authres.result("dkim", "fail", "body (hash) mismatch", header_d="example.com", header_b="ab/+Cd=x"),
        ],
    )
    assert field == (
        b"Authentication-Results: mx.example.org;\n"
        b"\tspf=pass smtp.mailfrom=example.com;\n"
        b'\tdkim=fail (body hash mismatch) header.d=example.com header.b="ab/+Cd=x"\n'
    )
    assert authres.header("mx.example.org", []) == b"Authentication-Results: mx.example.org; none\n"


def test_strip_removes_every_field_claiming_our_id_and_keeps_others():
    block = (
        b"From: a@example.com\n"
        b"Authentication-Results: MX.example.org; dmarc=pass\n"
        b"Authentication-Results:\n\tmx.example.org;\n\tspf=pass\n"
        b"Authentication-Results: (forged) mx.example.org (really); dkim=pass\n"
        b"Authentication-Results: mx.example.org.evil.test; spf=pass\n"
        b"Authentication-Results: other.example.net; spf=fail\n\tsmtp.mailfrom=x\n"
        b"Subject: hi\n"
    )
    stripped, removed = authres.strip(block, "mx.example.org")
    assert removed == 3
    assert stripped == (
        b"From: a@example.com\n"
        b"Authentication-Results: mx.example.org.evil.test; spf=pass\n"
        b"Authentication-Results: other.example.net; spf=fail\n\tsmtp.mailfrom=x\n"
        b"Subject: hi\n"
    )


# -- SPF over a fake lookup ------------------------------------------------------------------------


def fake_lookup(zone: dict):
    def lookup(name, rdtype, timeout):
        name = name.rstrip(".").lower()
        found = zone.get((name, rdtype), [])
        if isinstance(found, Exception):
            raise found
        if rdtype == "TXT":
            return [types.SimpleNamespace(strings=(t.encode(),)) for t in found]
        return [types.SimpleNamespace(address=a) for a in found]

    return lookup


@pytest.mark.parametrize(
    ("record", "result"),
    [
        ("v=spf1 ip4:192.0.2.0/24 -all", "pass"),
        ("v=spf1 ip4:198.51.100.1 -all", "fail"),
        ("v=spf1 ~all", "softfail"),
        ("v=spf1 ?all", "neutral"),
        ("v=spf1 ip4:192.0.2.300 -all", "permerror"),
    ],
)
def test_spf_results(record, result):
    zone = {("example.com", "TXT"): [record]}
    assert spf.check("192.0.2.7", "a@example.com", "helo.example.net", fake_lookup(zone), 2.0).result == result


def test_spf_none_void_limit_and_temperror():
    assert spf.check("192.0.2.7", "a@example.com", "h", fake_lookup({}), 2.0).result == "none"
    voids = {("example.com", "TXT"): ["v=spf1 a:x1.example.com a:x2.example.com a:x3.example.com -all"]}
    assert spf.check("192.0.2.7", "a@example.com", "h", fake_lookup(voids), 2.0).result == "permerror"
    down = {("example.com", "TXT"): spf.TempFail("timeout")}
    result = spf.check("192.0.2.7", "a@example.com", "h", fake_lookup(down), 2.0)
    assert (result.result, result.identity, result.domain) == ("temperror", "mailfrom", "example.com")


def test_spf_of_the_helo_name_for_the_null_sender():
    zone = {("relay.example.net", "TXT"): ["v=spf1 ip4:192.0.2.7 -all"]}
    result = spf.check("192.0.2.7", "", "relay.example.net", fake_lookup(zone), 2.0)
    assert (result.result, result.identity, result.domain) == ("pass", "helo", "relay.example.net")
