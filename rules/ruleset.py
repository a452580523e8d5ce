"""Loading analyst rule files (YAML) into an immutable, checked and compiled :class:`Ruleset`.

A rules directory holds one or more ``*.yaml`` files (merged into one ruleset; rule and list names
are unique across them, thresholds are defined once)::

    ruleset: payments                         # name
    version: 7                                # your version; the served version adds a content hash
    thresholds: {review: 0.6, block: 0.9}     # model score → base decision (severity must rise with score)
    kill_switch: {max_rate: 0.05, window: 1h, min_orders: 200}   # default for active non-allow rules
    lists:
      vip_customers: [cust_001, cust_002]
      disposable_domains: {file: lists/disposable_domains.txt}
    rules:
      - name: card_testing
        description: many small orders on one card within an hour
        owner: risk-team@example.com
        tags: [velocity, card-testing]
        when: features.card_order_count_1h != null && features.card_order_count_1h >= 5.0 && order.amount < 5.0
        action: block                         # allow | review | challenge | block
        priority: 100                         # order of evaluation and of attribution
        mode: active                          # or shadow: evaluated and recorded, never decides
        kill_switch: {max_rate: 0.02}         # or `off`
        tests:
          - name: five small orders
            order: {amount: 2.0}
            features: {card_order_count_1h: 6}
            expect: block                     # the ruleset's decision for this input
            matches: true                     # optional: whether this rule matched

Conditions are CEL, parsed and type-checked here (:mod:`rules.typecheck`), rewritten over flat
variables (:mod:`rules.flatten`) and compiled once with ``common-expression-language``; nothing is
``eval``-ed. ``version`` of the result is ``<declared versions>-<sha256 of every file and list>``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cel

from contracts.events import DECISION_SEVERITY
from feature_state.definitions import FeatureSet, load_feature_set
from rules import yamlsrc
from rules.celast import Node, parse, unparse
from rules.exceptions import CelSyntaxError, ListError, RulesetInvalid
from rules.flatten import IN_LIST_FUNCTION, Binder, Binding, BindingTable, flatten
from rules.lists import NamedList, build_list
from rules.schema import Environment
from rules.typecheck import check, conjuncts

ACTIONS = tuple(DECISION_SEVERITY)
MODES = ("active", "shadow")
PACKAGED_RULES = Path(__file__).parent / "examples"
TOP_KEYS = ("ruleset", "version", "description", "owner", "thresholds", "kill_switch", "lists", "rules")
RULE_KEYS = ("name", "description", "owner", "tags", "when", "action", "priority", "mode", "kill_switch", "tests")
TEST_KEYS = ("name", "order", "features", "score", "model", "expect", "matches")
KILL_KEYS = ("max_rate", "window", "min_orders")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$")
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class KillSwitchSpec:
    """Demote the rule to shadow when it matches more than ``max_rate`` of orders over ``window_s``."""

    max_rate: float
    window_s: int = 3600
    min_orders: int = 200


@dataclass(frozen=True)
class RuleTest:
    name: str
    order: dict[str, Any]
    features: dict[str, Any]
    score: float | None
    model: str | None
    expect: str | None
    matches: bool | None
    line: int


@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    action: str
    priority: int
    mode: str
    program: Any  # cel.Program over the flat variables
    description: str = ""
    owner: str = ""
    tags: tuple[str, ...] = ()
    tree: Node | None = None  # the condition as written (for the vectorised engine, lint, diff)
    flat: str = ""  # the compiled (flattened) CEL text
    flat_tree: Node | None = None
    file: str = ""
    line: int = 0
    tests: tuple[RuleTest, ...] = ()
    kill_switch: KillSwitchSpec | None = None
    demoted: bool = False  # set by the kill-switch: served as shadow

    def as_shadow(self) -> Rule:
        return dataclasses.replace(self, mode="shadow", demoted=True)


@dataclass(frozen=True)
class Ruleset:
    """An immutable, compiled ruleset. ``version`` = declared version(s) + content hash."""

    name: str
    version: str
    thresholds: tuple[tuple[float, str], ...]
    rules: tuple[Rule, ...]
    lists: dict[str, NamedList] = field(default_factory=dict)
    bindings: tuple[Binding, ...] = ()
    declared_version: str = "0"
    content_hash: str = ""
    source: str = ""
    warnings: tuple[str, ...] = ()
    uses_in_list_function: bool = False
    features: FeatureSet | None = None
    #: set by the serving holder: sees every outcome (kill-switch, metrics); None in backtests and tests
    monitor: Any = field(default=None, compare=False, repr=False)
    #: compiled per-order machinery (see rules.engine); derived from the fields above
    binder: Any = field(default=None, compare=False, repr=False)
    combined: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.binder is None:
            object.__setattr__(self, "binder", Binder(list(self.bindings), self.list_sets))
        if self.combined is None and self.rules:
            # every condition in one program: one evaluation per order when no rule errors
            object.__setattr__(self, "combined", cel.compile("[" + ", ".join(r.flat for r in self.rules) + "]"))

    @property
    def list_sets(self) -> dict[str, frozenset[str]]:
        return {n: lst.values for n, lst in self.lists.items()}

    def rule(self, name: str) -> Rule | None:
        for r in self.rules:
            if r.name == name:
                return r
        return None

    def with_demoted(self, names: set[str]) -> Ruleset:
        """The same ruleset with ``names`` served as shadow (the kill-switch); version says so."""
        if not names:
            return self
        rules = tuple(r.as_shadow() if r.name in names and r.mode == "active" else r for r in self.rules)
        base = self.version.split("+demoted:")[0]
        return dataclasses.replace(self, rules=rules, version=f"{base}+demoted:{','.join(sorted(names))}",
                                   combined=self.combined)


@dataclass
class Problem:
    file: str
    line: int
    col: int
    severity: str
    message: str
    code: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.severity}: {self.message}"


@dataclass
class LoadReport:
    """Everything ``rules check`` says about a directory, and the ruleset when it is valid."""

    problems: list[Problem] = field(default_factory=list)
    ruleset: Ruleset | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def parse_duration(value: Any) -> int:
    m = _DURATION.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a duration like 30s, 10m, 1h or 7d")
    return int(m.group(1)) * _UNIT[m.group(2)]


def rule_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted({*path.glob("*.yaml"), *path.glob("*.yml")})
    return [path]


def _suggest(word: str, options: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {close[0]}?" if close else f"; expected one of {', '.join(options)}"


class _Builder:
    def __init__(self, env_features: FeatureSet) -> None:
        self.features = env_features
        self.report = LoadReport()
        self.table = BindingTable()

    def problem(self, file: Path | str, line: int, col: int, msg: str, severity: str = "error", code: str = "") -> None:
        self.report.problems.append(Problem(str(file), line, col, severity, msg, code))

    def unknown_keys(self, f: Path, obj: yamlsrc.LocatedDict, allowed: tuple[str, ...], what: str) -> None:
        for k in obj:
            if k not in allowed:
                line, col, _ = obj.where.get(k, (obj.line, 1, ""))
                self.problem(f, line, col, f"{what}: unknown key {k!r}" + _suggest(k, allowed), code="unknown-key")

    def kill_switch(self, f: Path, spec: Any, line: int, what: str) -> KillSwitchSpec | None | str:
        if spec in (None, False, "off"):
            return "off" if spec in (False, "off") else None
        if not isinstance(spec, dict):
            self.problem(f, line, 1, f"{what}: kill_switch is a mapping {{max_rate, window, min_orders}} or `off`")
            return None
        if isinstance(spec, yamlsrc.LocatedDict):
            self.unknown_keys(f, spec, KILL_KEYS, f"{what} kill_switch")
        rate = spec.get("max_rate")
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 < float(rate) <= 1.0:
            self.problem(f, line, 1, f"{what}: kill_switch.max_rate must be a fraction in (0, 1], e.g. 0.05")
            return None
        try:
            window = parse_duration(spec.get("window", "1h"))
        except ValueError as exc:
            self.problem(f, line, 1, f"{what}: kill_switch.window: {exc}")
            return None
        min_orders = spec.get("min_orders", 200)
        if not isinstance(min_orders, int) or isinstance(min_orders, bool) or min_orders < 1:
            self.problem(f, line, 1, f"{what}: kill_switch.min_orders must be a whole number ≥ 1")
            return None
        return KillSwitchSpec(float(rate), window, min_orders)


def _tests(b: _Builder, f: Path, raw: Any, rule_name: str, line: int) -> tuple[RuleTest, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        b.problem(f, line, 1, f"rule {rule_name}: `tests` is a list of {{order, features, score, expect}}")
        return ()
    out: list[RuleTest] = []
    for i, t in enumerate(raw):
        tline = getattr(t, "line", line)
        if not isinstance(t, yamlsrc.LocatedDict):
            b.problem(f, tline, 1, f"rule {rule_name}: test {i + 1} must be a mapping")
            continue
        b.unknown_keys(f, t, TEST_KEYS, f"rule {rule_name} test {i + 1}")
        expect = t.get("expect")
        matches = t.get("matches")
        if expect is None and matches is None:
            b.problem(f, tline, 1, f"rule {rule_name} test {i + 1}: say what to expect: `expect: <action>` "
                      "and/or `matches: true|false`")
        if expect is not None and expect not in ACTIONS:
            b.problem(f, tline, 1, f"rule {rule_name} test {i + 1}: expect must be one of {', '.join(ACTIONS)}")
        if matches is not None and not isinstance(matches, bool):
            b.problem(f, tline, 1, f"rule {rule_name} test {i + 1}: matches must be true or false")
        order = t.get("order") or {}
        feats = t.get("features") or {}
        if not isinstance(order, dict) or not isinstance(feats, dict):
            b.problem(f, tline, 1, f"rule {rule_name} test {i + 1}: order and features are mappings")
            continue
        unknown = [k for k in feats if k not in b.features.names]
        for k in unknown:
            b.problem(f, tline, 1, f"rule {rule_name} test {i + 1}: unknown feature {k}"
                      + _suggest(k, tuple(b.features.names)), code="unknown-feature")
        score = t.get("score")
        if score is not None and (not isinstance(score, (int, float)) or isinstance(score, bool)):
            b.problem(f, tline, 1, f"rule {rule_name} test {i + 1}: score must be a number or null")
            score = None
        out.append(RuleTest(str(t.get("name") or f"test {i + 1}"), _plain(order), _plain(feats),
                            None if score is None else float(score), t.get("model"), expect, matches, tline))
    return tuple(out)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def _compile_condition(
    b: _Builder, f: Path, raw: yamlsrc.LocatedDict, name: str, when: str, env: Environment
) -> tuple[Node, Any, str, Node] | None:
    def at(offset: int) -> tuple[int, int]:
        return yamlsrc.position(raw, "when", offset, when)

    try:
        tree = parse(when)
    except CelSyntaxError as exc:
        line, col = at(exc.pos)
        b.problem(f, line, col, f"rule {name}: {exc.message}", code="syntax")
        return None
    result = check(tree, env)
    for fnd in result.findings:
        line, col = at(fnd.pos)
        b.problem(f, line, col, f"rule {name}: {fnd.message}", fnd.severity, fnd.code)
    if result.errors:
        return None
    try:  # the runtime must accept the text as written, not just our rewrite of it
        cel.compile(when)
        flat_tree = flatten(tree, b.table)
        flat_text = unparse(flat_tree)
        program = cel.compile(flat_text)
    except BaseException as exc:  # noqa: BLE001 - the Rust library can raise a PanicException (BaseException)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        line, col = at(0)
        b.problem(f, line, col, f"rule {name}: the CEL runtime refused the condition: {str(exc).splitlines()[0]}",
                  code="syntax")
        return None
    return tree, program, flat_text, flat_tree


def _lints_across_rules(b: _Builder, rules: list[Rule]) -> None:
    """Duplicate and unreachable rules (conditions compared conjunct by conjunct)."""
    active = [r for r in rules if r.mode == "active" and r.tree is not None]
    conj = {r.name: frozenset(unparse(c) for c in conjuncts(r.tree)) for r in active if r.tree is not None}
    for r in active:
        for other in active:
            if other is r:
                continue
            mine, theirs = conj[r.name], conj[other.name]
            if not theirs <= mine:
                continue
            same = mine == theirs
            sev_r, sev_o = DECISION_SEVERITY[r.action], DECISION_SEVERITY[other.action]
            if other.action == "block" and r.action != "block":
                why = f"whenever it matches, block rule {other.name} matches too and block wins"
            elif other.action == "allow" and r.action in ("review", "challenge"):
                why = f"whenever it matches, allow rule {other.name} matches too and allow wins over {r.action}"
            elif other.action == r.action and (not same or (r.priority, r.name) < (other.priority, other.name)):
                why = (f"it has the same condition and action as {other.name}" if same else
                       f"whenever it matches, {other.name} (same action, broader condition) matches too")
            elif same and sev_o > sev_r and r.action != "allow":
                why = f"it has the same condition as {other.name}, whose {other.action} is more severe"
            else:
                continue
            b.problem(r.file, r.line, 1, f"rule {r.name} can never decide: {why}", "warning", "unreachable")
            break


def load_report(path: str | Path, features: FeatureSet | None = None) -> LoadReport:
    """Check and compile a rules directory (or one file); never raises for bad rules, reports them."""
    p = Path(path)
    feature_set = features or load_feature_set(None)
    b = _Builder(feature_set)
    if not p.exists():
        b.problem(p, 1, 1, "no such file or directory")
        return b.report
    files = rule_files(p)
    if not files:
        b.problem(p, 1, 1, "no rule files (*.yaml) found")
        return b.report
    digest = hashlib.sha256()
    names: list[str] = []
    declared: list[str] = []
    thresholds: dict[str, float] = {}
    threshold_file: Path | None = None
    lists: dict[str, NamedList] = {}
    default_ks: dict[Path, KillSwitchSpec | None] = {}
    docs: list[tuple[Path, yamlsrc.LocatedDict]] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            b.problem(f, 1, 1, f"cannot read: {exc}")
            continue
        digest.update(f.name.encode() + b"\0" + text.encode() + b"\0")
        try:
            doc = yamlsrc.load(text)
        except Exception as exc:  # yaml.YAMLError and the constructors' errors
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 1
            col = mark.column + 1 if mark is not None else 1
            b.problem(f, line, col, f"not valid YAML: {getattr(exc, 'problem', None) or exc}", code="yaml")
            continue
        if doc is None:
            doc = yamlsrc.LocatedDict()
            doc.where = {}
        if not isinstance(doc, yamlsrc.LocatedDict):
            b.problem(f, 1, 1, "expected a mapping with `ruleset`, `version`, `thresholds`, `lists` and `rules`")
            continue
        b.unknown_keys(f, doc, TOP_KEYS, "top level")
        names.append(str(doc.get("ruleset", f.stem)))
        declared.append(str(doc.get("version", "0")))
        raw_t = doc.get("thresholds")
        if raw_t is not None:
            tline = doc.where.get("thresholds", (1, 1, ""))[0]
            if threshold_file is not None:
                b.problem(f, tline, 1, f"thresholds are already defined in {threshold_file}; define them once")
            elif not isinstance(raw_t, dict):
                b.problem(f, tline, 1, "thresholds map actions to scores, e.g. {review: 0.6, block: 0.9}")
            else:
                threshold_file = f
                for action, value in raw_t.items():
                    line = raw_t.where[action][0] if isinstance(raw_t, yamlsrc.LocatedDict) else tline
                    if action not in ("review", "challenge", "block"):
                        b.problem(f, line, 1, f"threshold action must be review, challenge or block; got {action!r}"
                                  + (_suggest(str(action), ("review", "challenge", "block")) if action != "allow"
                                     else " (allow is what remains below the lowest threshold)"))
                    elif not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                        b.problem(f, line, 1, f"threshold {action} must be a score in [0, 1], got {value!r}")
                    else:
                        thresholds[action] = float(value)
                ordered = sorted(thresholds.items(), key=lambda kv: DECISION_SEVERITY[kv[0]])
                for (a1, v1), (a2, v2) in zip(ordered, ordered[1:], strict=False):
                    if v2 < v1:
                        b.problem(f, tline, 1, f"thresholds must rise with severity: {a2} {v2} is below {a1} {v1}")
        ks = b.kill_switch(f, doc.get("kill_switch"), doc.where.get("kill_switch", (1, 1, ""))[0], "ruleset")
        default_ks[f] = ks if isinstance(ks, KillSwitchSpec) else None
        raw_lists = doc.get("lists") or {}
        if not isinstance(raw_lists, dict):
            b.problem(f, doc.where.get("lists", (1, 1, ""))[0], 1, "lists map names to values or {file: path}")
            raw_lists = {}
        for lname, spec in raw_lists.items():
            line = raw_lists.where[lname][0] if isinstance(raw_lists, yamlsrc.LocatedDict) else 1
            if lname in lists:
                b.problem(f, line, 1, f"list {lname} is defined twice")
                continue
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", lname):
                b.problem(f, line, 1, f"list name {lname!r} must be an identifier (letters, digits, _)")
                continue
            try:
                lists[lname] = build_list(lname, spec, f.parent)
            except ListError as exc:
                b.problem(f, line, 1, str(exc), code="list")
                continue
            digest.update(f"list:{lname}:{lists[lname].digest}\0".encode())
        docs.append((f, doc))
    env = Environment.build(feature_set, {n: len(v) for n, v in lists.items()})
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for f, doc in docs:
        raw_rules = doc.get("rules") or []
        if not isinstance(raw_rules, list):
            b.problem(f, doc.where.get("rules", (1, 1, ""))[0], 1, "`rules` is a list of rules")
            continue
        for raw in raw_rules:
            if not isinstance(raw, yamlsrc.LocatedDict):
                b.problem(f, getattr(raw_rules, "line", 1), 1, "each rule is a mapping with name, when and action")
                continue
            rule = _rule(b, f, raw, env, seen, default_ks.get(f))
            if rule is not None:
                rules.append(rule)
    if b.report.errors:
        return b.report
    _lints_across_rules(b, rules)
    rules.sort(key=lambda r: (-r.priority, r.name))
    ordered_t = tuple(sorted(((v, a) for a, v in thresholds.items()),
                             key=lambda va: (-va[0], -DECISION_SEVERITY[va[1]])))
    content = digest.hexdigest()
    declared_version = "+".join(dict.fromkeys(declared))
    bindings = tuple(b.table.bindings)
    b.report.ruleset = Ruleset(
        name="+".join(dict.fromkeys(names)),
        version=f"{declared_version}-{content[:12]}",
        thresholds=ordered_t,
        rules=tuple(rules),
        lists=lists,
        bindings=bindings,
        declared_version=declared_version,
        content_hash=content,
        source=str(p),
        warnings=tuple(str(w) for w in b.report.warnings),
        uses_in_list_function=any(IN_LIST_FUNCTION in r.flat for r in rules),
        features=feature_set,
    )
    return b.report


def _rule(
    b: _Builder, f: Path, raw: yamlsrc.LocatedDict, env: Environment, seen: dict[str, str],
    default_ks: KillSwitchSpec | None,
) -> Rule | None:
    name = raw.get("name")
    line = raw.line
    if not isinstance(name, str) or not name:
        b.problem(f, line, 1, "rule without a `name`")
        return None
    what = f"rule {name}"
    if not _NAME.match(name):
        b.problem(f, line, 1, f"{what}: names start with a letter and use letters, digits, _ . - (at most 128)")
    if name in seen:
        b.problem(f, line, 1, f"duplicate rule name {name} (first defined at {seen[name]})", code="duplicate")
        return None
    seen[name] = f"{f}:{line}"
    b.unknown_keys(f, raw, RULE_KEYS, what)
    ok = True
    action = raw.get("action")
    if action not in ACTIONS:
        b.problem(f, raw.where.get("action", (line, 1, ""))[0], 1,
                  f"{what}: action must be one of {', '.join(ACTIONS)}" + (f"; got {action!r}" if action else ""))
        ok = False
    mode = raw.get("mode", "active")
    if mode not in MODES:
        b.problem(f, raw.where.get("mode", (line, 1, ""))[0], 1, f"{what}: mode must be active or shadow")
        ok = False
    priority = raw.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        b.problem(f, raw.where.get("priority", (line, 1, ""))[0], 1, f"{what}: priority must be a whole number")
        ok = False
    tags = raw.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        b.problem(f, line, 1, f"{what}: tags is a list of words")
        tags = []
    ks_raw = b.kill_switch(f, raw.get("kill_switch"), raw.where.get("kill_switch", (line, 1, ""))[0], what)
    ks = None if ks_raw == "off" else (ks_raw if isinstance(ks_raw, KillSwitchSpec) else default_ks)
    if action == "allow" and isinstance(ks_raw, KillSwitchSpec):
        b.problem(f, line, 1, f"{what}: a kill-switch watches block, review and challenge rates; allow rules have none",
                  "warning")
    if action == "allow":
        ks = None
    tests = _tests(b, f, raw.get("tests"), name, line)
    when = raw.get("when")
    if not isinstance(when, str) or not when.strip():
        b.problem(f, raw.where.get("when", (line, 1, ""))[0], 1, f"{what}: `when` must be a CEL condition (a string)")
        return None
    compiled = _compile_condition(b, f, raw, name, when, env)
    if compiled is None or not ok:
        return None
    tree, program, flat, flat_tree = compiled
    return Rule(
        name=name, when=when, action=str(action), priority=int(priority), mode=str(mode), program=program,
        description=str(raw.get("description") or ""), owner=str(raw.get("owner") or ""),
        tags=tuple(tags), tree=tree, flat=flat, flat_tree=flat_tree, file=str(f), line=line, tests=tests,
        kill_switch=ks,
    )


def load_ruleset(path: str | Path, features: FeatureSet | None = None) -> Ruleset:
    """Load, check and compile a rules directory (or one file); raise :class:`RulesetInvalid` on errors."""
    report = load_report(path, features)
    if report.errors or report.ruleset is None:
        raise RulesetInvalid([str(p) for p in report.errors] or [f"{path}: no ruleset"])
    return report.ruleset


def build_ruleset(
    rules: list[dict[str, Any]],
    *,
    lists: dict[str, list[str]] | None = None,
    thresholds: dict[str, float] | None = None,
    name: str = "adhoc",
    features: FeatureSet | None = None,
    check_types: bool = True,
) -> Ruleset:
    """A ruleset from Python data (benchmarks, property tests, tools) — same compilation as files.

    ``rules`` are dicts with the rule-file keys (``name``, ``when``, ``action``, ``priority``,
    ``mode``). With ``check_types=False`` conditions are only parsed and compiled (the property
    tests feed ill-typed conditions on purpose, to compare how each engine fails).
    """
    fs = features or load_feature_set(None)
    named = {n: NamedList(n, frozenset(v), "inline", hashlib.sha256("\n".join(sorted(v)).encode()).hexdigest())
             for n, v in (lists or {}).items()}
    env = Environment.build(fs, {n: len(v) for n, v in named.items()})
    table = BindingTable()
    out: list[Rule] = []
    problems: list[str] = []
    for raw in rules:
        when = str(raw["when"])
        try:
            tree = parse(when)
        except CelSyntaxError as exc:
            problems.append(f"rule {raw['name']}: {exc.message}")
            continue
        if check_types:
            errs = check(tree, env).errors
            if errs:
                problems.extend(f"rule {raw['name']}: {e.message}" for e in errs)
                continue
        flat_tree = flatten(tree, table)
        flat = unparse(flat_tree)
        try:
            program = cel.compile(flat)
        except Exception as exc:  # the CEL parser's own error types
            problems.append(f"rule {raw['name']}: the CEL runtime refused the condition: {exc}")
            continue
        out.append(Rule(
            name=str(raw["name"]), when=when, action=str(raw.get("action", "review")),
            priority=int(raw.get("priority", 0)), mode=str(raw.get("mode", "active")), program=program,
            tree=tree, flat=flat, flat_tree=flat_tree,
        ))
    if problems:
        raise RulesetInvalid(problems)
    out.sort(key=lambda r: (-r.priority, r.name))
    th = tuple(sorted(((v, a) for a, v in (thresholds or {}).items()),
                      key=lambda va: (-va[0], -DECISION_SEVERITY[va[1]])))
    digest = hashlib.sha256(repr([(r.name, r.when, r.action, r.mode) for r in out]).encode()).hexdigest()
    return Ruleset(name=name, version=f"0-{digest[:12]}", thresholds=th, rules=tuple(out), lists=named,
                   bindings=tuple(table.bindings), content_hash=digest, source="<memory>",
                   uses_in_list_function=any(IN_LIST_FUNCTION in r.flat for r in out), features=fs)
