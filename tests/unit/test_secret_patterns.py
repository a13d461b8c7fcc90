"""Every secret pattern of the diff.secrets gate, each with what it must catch and what it must let
pass. Secret-looking strings are assembled at run time, so this file itself holds none."""

from __future__ import annotations

import pytest

from quality_gates.diff import SECRET_PATTERNS, find_secrets, secret_file_kind

B64 = "Zq3/Hk9TmB2vXr7LpW+e5NcYs1Ua8GdJf4KoRi6x"  # 40 varied base64 characters, as a real secret key is

# kind -> (texts it must be found in, texts it must not be found in)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "private key": (
        ["-----BEGIN " + "RSA PRIVATE KEY-----", "-----BEGIN " + "PRIVATE KEY-----",
         "-----BEGIN " + "OPENSSH PRIVATE KEY-----", "-----BEGIN " + "PGP PRIVATE KEY BLOCK-----"],
        ["-----BEGIN " + "PUBLIC KEY-----", "-----BEGIN " + "CERTIFICATE-----", "a private key goes here"],
    ),
    "AWS access key id": (
        ["key = " + "AKIA" + "Q3EGUV4ZW2XB7KDM", "ASIA" + "Q3EGUV4ZW2XB7KDM"],
        ["AKIA" + "IOSFODNN7" + "EXAMPLE", "AKIA" + "Q3EGUV4ZW2XB7KD", "akia" + "q3eguv4zw2xb7kdm",
         "XAKIA" + "Q3EGUV4ZW2XB7KDM"],
    ),
    "GitHub token": (
        ["ghp" + "_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", "gho" + "_" + "x" * 36, "ghs" + "_" + "Y" * 40],
        ["ghx" + "_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", "ghp" + "_" + "x" * 35, "ghp_token"],
    ),
    "GitHub fine-grained token": (
        ["github" + "_pat_" + "11ABCDEFG0" + "x" * 30, "github" + "_pat_" + "A" * 82],
        ["github" + "_pat_" + "x" * 39, "github_pat"],
    ),
    "Slack token": (
        ["xox" + "b-1234567890-abcdefghijk", "xox" + "p-0000000000"],
        ["xox" + "z-1234567890-abcdefghijk", "xox" + "b-12345678", "xoxb"],
    ),
    "Slack webhook": (
        ["https://hooks.slack.com/services/" + "T0AB12CD3/B0AB12CD3/" + "abcDEF123456ghiJKL"],
        ["https://hooks.slack.com/workflows/" + "T0AB12CD3/B0AB12CD3/abc", "https://example.com/services/T1/B1/x",
         "https://hooks.slack.com/services/"],
    ),
    "Stripe live key": (
        ["sk" + "_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "rk" + "_live_" + "0" * 20],
        ["sk" + "_test_" + "4eC39HqLyjWDarjtT1zdp7dc", "sk" + "_live_" + "short", "pk" + "_live_" + "0" * 24],
    ),
    "Google API key": (
        ["AIza" + "SyA-1234567890abcdefghijklmnopqrstu"],
        ["AIza" + "SyA-1234567890abcdefghijklmnopqrst", "AIza"],
    ),
    "AWS secret access key": (
        [f"aws_secret_access_key = {B64}", f'"{B64}"'],
        ["da39a3ee5e6b4b0d3255bfef95601890afd80709",  # a hex digest (sha1 of nothing)
         "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY",  # AWS's documented example
         "ThisIsAVeryLongIdentifierNameForTesting1",  # CamelCase, one digit: a name
         "zzzzzzzzzzYYYYYYYYYY0000000000zz/+zzzzzz",  # every class and a slash, but far from random
         "x" + B64],  # 41 characters: not a key standing on its own
    ),
}


def test_every_pattern_has_cases():
    assert set(CASES) == {kind for kind, _ in SECRET_PATTERNS}


def _kinds(text: str) -> list[str]:
    return [kind for kind, _ in find_secrets(f"prefix {text} suffix\n")]


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_pattern_finds_its_secrets_and_only_them(kind):
    found, clean = CASES[kind]
    for text in found:
        assert kind in _kinds(text), f"{kind} not found in {text!r}"
        shown = [shown for k, shown in find_secrets(text) if k == kind]
        if kind != "private key":  # a key's header names its type and is shown; any token is cut short
            assert all(s.endswith("…") and len(s) <= 5 for s in shown), shown
    for text in clean:
        assert kind not in _kinds(text), f"{kind} wrongly found in {text!r}"


@pytest.mark.parametrize(("path", "kind"), [
    (".env", "an environment file"), ("app/.env.production", "an environment file"),
    ("home/.ssh/id_ed25519", "an SSH private key file"), ("id_rsa", "an SSH private key file"),
    ("certs/client.p12", "a key store"), ("win/cert.pfx", "a key store"),
    (".env.example", None), ("config/.env.sample", None), ("id_rsa.pub", None), ("docs/environment.md", None),
    ("src/env.py", None),
])
def test_file_names_that_are_secrets_by_themselves(path, kind):
    assert secret_file_kind(path) == kind
