"""`rules check`: every type error and lint, with its message and file:line:col; malicious rules refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraudscore.cli import main
from rules.ruleset import load_report

HEADER = """\
ruleset: t
version: 1
thresholds: {review: 0.5, block: 0.9}
lists:
  disposable_domains: [mailinator.com]
  vip: [cust_1]
rules:
"""


def one_rule(when: str, action: str = "review", extra: str = "") -> str:
    quoted = when.replace("'", "''")
    return HEADER + f"  - name: r1\n    when: '{quoted}'\n    action: {action}\n{extra}"


ERRORS = [
    # (condition, finding code, message fragment)
    ("features.cust_cnt_1h > 3.0", "unknown-feature", "unknown feature features.cust_cnt_1h; did you mean customer_order_count_1h?"),  # noqa: E501
    ("has(order.emial_domain)", "unknown-field", "did you mean email_domain?"),
    ("order.emial_domain == 'x'", "unknown-field", "unknown field order.emial_domain; did you mean email_domain?"),
    ("ordr.amount > 1.0", "unknown-name", "unknown name ordr; did you mean order?"),
    ("order.amount * 2 > 100.0", "type-mismatch", "`*` mixes double and int: CEL does not convert numbers implicitly; write 2.0 instead of 2"),  # noqa: E501
    ("order.amount > 'a'", "type-mismatch", "cannot compare order.amount (double) with \"a\" (string)"),
    ("order.amount % 2.0 == 0.0", "type-mismatch", "`%` is not defined on doubles"),
    ("order.amount", "not-bool", "a condition must be a boolean; this one is a double"),
    ("order.amount && true", "type-mismatch", "`&&` needs booleans; order.amount is a double"),
    ("has(order.email_domain) && order.email_domain in lists.disposable", "unknown-list", "no list named disposable; did you mean disposable_domains?"),  # noqa: E501
    ("size(lists.vip) > 1", "type-mismatch", "size() needs a string, list or map"),
    ("lists.vip == 'a'", "list-misuse", "a list can only be used on the right of `in`"),
    ("has(order.email_domain) && order.email_domain.lowerAscii() == 'a'", "unknown-function", "unknown function lowerAscii"),  # noqa: E501
    ("has(order.ip_country) && order.ip_country.matches('(a)\\\\1')", "regex-unsafe", "not RE2-safe: backreferences are not supported"),  # noqa: E501
    ("has(order.ip_country) && order.ip_country.matches('(?=a)b')", "regex-unsafe", "look-around"),
    ("has(order.ip_country) && order.ip_country.matches(order.ip_country)", "regex-not-literal", "needs a literal pattern"),  # noqa: E501
    ("has(order.items) && order.items.exists(order, true)", "shadowed-name", "hides the order of the condition"),
    ("1 / 0 == 1", "always-error", "the condition always fails"),
    ("order.payment.card_country.startsWith(1)", "bad-call", "startsWith() takes one string"),
    ("!order.amount", "type-mismatch", "`!` needs a boolean"),
    ("order.channel < 3", "type-mismatch", "cannot compare"),
    ("order.amount > null", "type-mismatch", "with null always errors"),
    ("timestamp(order.amount) > timestamp('2024-01-01T00:00:00Z')", "type-mismatch", "timestamp() needs an RFC 3339 string"),  # noqa: E501
]

WARNINGS = [
    ("order.email_domain == 'a.com'", "unguarded-optional", "order.email_domain is optional: orders without it make this rule error"),  # noqa: E501
    ("order.payment.card_bin == '411111'", "unguarded-optional", "guard it with has(order.payment) && has(order.payment.card_bin)"),  # noqa: E501
    ("features.account_age_days < 1.0", "unguarded-null", "features.account_age_days can be null"),
    ("has(order.channel) && order.channel == 'webb'", "impossible-literal", "'webb' is not a possible value (order.channel is one of app, phone, pos, web)"),  # noqa: E501
    ("has(order.ip_country) && order.ip_country == 'fr'", "impossible-literal", "always matches ^[A-Z]{2}$"),
    ("score > 1.0", "always-constant", "never true: score is always within [0, 1]"),
    ("features.hour_of_day >= 24.0", "always-constant", "never true: features.hour_of_day is always within [0, 23]"),
    ("order.amount >= 0.0", "always-constant", "always true (when order.amount has a value)"),
    ("order.amount > 5.0 && order.amount < 3.0", "always-constant", "the conditions on order.amount contradict each other"),  # noqa: E501
    ("1 < 2 && order.amount > 1.0", "always-constant", "always true: (1 < 2) does not depend on the order"),
    ("true", "always-constant", "the condition is always true"),
    ("order.amount == 'x'", "always-constant", "always false: order.amount is a double"),
]


@pytest.mark.parametrize(("when", "code", "fragment"), ERRORS, ids=[e[1] + ":" + e[0][:30] for e in ERRORS])
def test_errors_name_the_problem_with_file_line_col(write_rules, feature_set, when, code, fragment):
    d = write_rules(rules=one_rule(when))
    report = load_report(d, feature_set)
    assert report.ruleset is None, "an error must refuse the ruleset"
    found = [p for p in report.errors if p.code == code]
    assert found, f"no {code} error for {when!r}; got {[str(p) for p in report.problems]}"
    assert any(fragment in p.message for p in found), [p.message for p in found]
    text = str(found[0])
    assert text.startswith(f"{d / 'rules.yaml'}:9:"), text  # the `when:` line
    assert ": error: rule r1: " in text


@pytest.mark.parametrize(("when", "code", "fragment"), WARNINGS, ids=[w[1] + ":" + w[0][:30] for w in WARNINGS])
def test_warnings_keep_the_ruleset_but_say_why(write_rules, feature_set, when, code, fragment):
    d = write_rules(rules=one_rule(when))
    report = load_report(d, feature_set)
    assert report.ruleset is not None, [str(p) for p in report.errors]
    found = [p for p in report.warnings if p.code == code]
    assert found and any(fragment in p.message for p in found), [str(p) for p in report.problems]


def test_column_points_at_the_offending_name(write_rules, feature_set):
    d = write_rules(rules=HEADER + "  - name: r1\n    when: order.amount > 1.0 && features.nope > 1.0\n    action: review\n")  # noqa: E501
    (err,) = [p for p in load_report(d, feature_set).errors if p.code == "unknown-feature"]
    line = (d / "rules.yaml").read_text().splitlines()[err.line - 1]
    assert line[err.col - 1 :].startswith("nope"), (line, err.col)


def test_guards_silence_the_null_and_optional_warnings(write_rules, feature_set):
    guarded = [
        "has(order.email_domain) && order.email_domain == 'a.com'",
        "!has(order.email_domain) || order.email_domain == 'a.com'",
        "has(order.payment) && has(order.payment.card_bin) && order.payment.card_bin == '411111'",
        "features.account_age_days != null && features.account_age_days < 1.0",
        "has(order.account_created_at) && features.account_age_days < 1.0",
        "features.account_age_days == null ? false : features.account_age_days < 1.0",
    ]
    for when in guarded:
        report = load_report(write_rules(rules=one_rule(when)), feature_set)
        assert report.problems == [], (when, [str(p) for p in report.problems])


def test_structural_problems(write_rules, feature_set):
    d = write_rules(rules=HEADER + """\
  - name: dup
    when: order.amount > 1.0
    action: review
  - name: dup
    when: order.amount > 2.0
    action: review
  - name: bad_action
    when: order.amount > 1.0
    action: deny
  - name: bad_mode
    when: order.amount > 1.0
    action: review
    mode: canary
  - name: typo_key
    when: order.amount > 1.0
    acton: review
    action: review
  - name: no_when
    action: review
""")
    msgs = [str(p) for p in load_report(d, feature_set).errors]
    joined = "\n".join(msgs)
    assert "duplicate rule name dup (first defined at" in joined
    assert "rule bad_action: action must be one of allow, review, challenge, block; got 'deny'" in joined
    assert "rule bad_mode: mode must be active or shadow" in joined
    assert "rule typo_key: unknown key 'acton'; did you mean action?" in joined
    assert "rule no_when: `when` must be a CEL condition" in joined


def test_thresholds_and_lists_are_validated(write_rules, feature_set):
    d = write_rules(rules="""\
ruleset: t
thresholds: {review: 0.9, block: 0.5, allow: 0.1}
lists:
  numbers: [411111, "x"]
  missing_file: {file: nope.txt}
rules: []
""")
    joined = "\n".join(str(p) for p in load_report(d, feature_set).errors)
    assert "thresholds must rise with severity: block 0.5 is below review 0.9" in joined
    assert "allow is what remains below the lowest threshold" in joined
    assert "list numbers: values are strings; quote 411111 as \"411111\"" in joined
    assert "nope.txt: cannot read list file" in joined


def test_unreachable_and_redundant_rules(write_rules, feature_set):
    d = write_rules(rules=HEADER + """\
  - name: big_block
    when: order.amount > 1000.0
    action: block
  - name: big_and_new_review
    when: order.amount > 1000.0 && has(order.account_created_at)
    action: review
  - name: same_as_big
    when: order.amount > 1000.0
    action: challenge
  - name: vip
    when: order.customer_id in lists.vip
    action: allow
  - name: vip_review
    when: order.customer_id in lists.vip && order.amount > 10.0
    action: review
  - name: vip_shadow
    when: order.customer_id in lists.vip && order.amount > 10.0
    action: review
    mode: shadow
""")
    report = load_report(d, feature_set)
    unreachable = {p.message.split()[1]: p.message for p in report.warnings if p.code == "unreachable"}
    assert "block rule big_block matches too and block wins" in unreachable["big_and_new_review"]
    assert "block rule big_block matches too" in unreachable["same_as_big"]
    assert "allow rule vip matches too and allow wins over review" in unreachable["vip_review"]
    assert "vip_shadow" not in unreachable and "big_block" not in unreachable and "vip" not in unreachable


def test_parse_errors_point_into_the_condition(write_rules, feature_set):
    d = write_rules(rules=one_rule("order.amount > && true"))
    (err,) = load_report(d, feature_set).errors
    assert err.code == "syntax" and "expected a value, found '&&'" in err.message
    assert err.line == 9 and err.col > 10


def test_invalid_yaml_is_reported_with_its_line(write_rules, feature_set):
    d = write_rules(rules="ruleset: t\nrules:\n  - name: a\n    when: [unclosed\n")
    (err,) = load_report(d, feature_set).errors
    assert err.code == "yaml" and err.line >= 4


# ---------------------------------------------------------------------------------- malicious rules


def test_a_one_megabyte_expression_is_refused_before_it_reaches_cel(write_rules, feature_set):
    huge = "order.amount > 1.0 && " + " && ".join(["order.amount > 1.0"] * 60000)
    assert len(huge) > 1_000_000
    d = write_rules(rules=HEADER + f"  - name: huge\n    when: \"{huge}\"\n    action: block\n")
    errs = load_report(d, feature_set).errors
    assert any("characters long; the limit is 4096" in e.message for e in errs), [str(e)[:200] for e in errs]


def test_deep_nesting_is_refused_instead_of_crashing_the_process(write_rules, feature_set):
    # 100k nested parentheses make the Rust CEL parser panic (a BaseException that would kill a worker).
    deep = "(" * 2000 + "true" + ")" * 2000
    d = write_rules(rules=HEADER + f"  - name: deep\n    when: \"{deep}\"\n    action: block\n")
    errs = load_report(d, feature_set).errors
    assert any("tokens; split it" in e.message or "nested deeper" in e.message for e in errs), errs
    deep = "(" * 30 + "true" + ")" * 30
    errs = load_report(write_rules("r3", rules=one_rule(deep)), feature_set).errors
    assert any("nested deeper than 24 levels" in e.message for e in errs)
    unary = "!" * 200 + "true"
    errs = load_report(write_rules("r2", rules=one_rule(unary)), feature_set).errors
    assert any("nested deeper than" in e.message for e in errs)


def test_too_many_parts_are_refused(write_rules, feature_set):
    wide = " || ".join(["score == 0.1"] * 200)
    errs = load_report(write_rules(rules=one_rule(wide)), feature_set).errors
    assert any("more than 400 parts" in e.message or "tokens" in e.message for e in errs)


@pytest.mark.parametrize("pattern", ["(a+)+\\\\1", "^(?=.*a)(?=.*b)", "(?<=x)y", "x{100000}"])
def test_regexes_a_linear_time_engine_cannot_run_are_refused(write_rules, feature_set, pattern):
    when = f"has(order.email_domain) && order.email_domain.matches('{pattern}')"
    errs = load_report(write_rules(rules=one_rule(when)), feature_set).errors
    assert any(e.code == "regex-unsafe" for e in errs), [str(e) for e in errs]


@pytest.mark.parametrize("when", [
    "order.__class__ == 'x'",
    "order.amount.__class__.__mro__ == []",
    "__import__('os').system('true') == 0",
    "eval('1') == 1",
    "order.__dict__ == {}",
    "features.__class__.__subclasses__() == []",
    "type(order).__name__ == 'dict'",
])
def test_attempts_to_reach_python_objects_are_refused(write_rules, feature_set, when):
    report = load_report(write_rules(rules=one_rule(when)), feature_set)
    assert report.ruleset is None
    assert {e.code for e in report.errors} & {"unknown-field", "unknown-name", "unknown-function", "type-mismatch"}


# ------------------------------------------------------------------------------------------ CLI


def test_check_cli_exit_codes_and_output(write_rules, capsys, tmp_path: Path):
    assert main(["--data-dir", str(tmp_path / "d"), "rules", "check", "rules/examples"]) == 0
    out = capsys.readouterr().out
    assert "ruleset default version 2-" in out and "0 warnings" in out
    bad = write_rules(rules=one_rule("features.cust_cnt_1h > 3.0"))
    assert main(["--data-dir", str(tmp_path / "d"), "rules", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad / 'rules.yaml'}:9:" in err and "did you mean customer_order_count_1h?" in err
    warn = write_rules("w", rules=one_rule("features.account_age_days < 1.0"))
    assert main(["--data-dir", str(tmp_path / "d"), "rules", "check", str(warn)]) == 0
    assert main(["--data-dir", str(tmp_path / "d"), "rules", "check", str(warn), "--strict"]) == 1
    assert main(["--data-dir", str(tmp_path / "d"), "rules", "check", str(tmp_path / "nope")]) == 2
    capsys.readouterr()
    assert main(["--data-dir", str(tmp_path / "d"), "rules", "check", str(bad), "--format", "json"]) == 1
    assert '"code": "unknown-feature"' in capsys.readouterr().out
