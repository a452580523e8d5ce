"""Fraud scenarios for one simulated day.

Each scenario draws *instances* (a burst, a takeover, a spree, …) until its share of the day's
fraud budget is spent (the number of instances is Poisson with mean budget / mean instance size).
Every row carries its scenario and instance id for the ground-truth file; nothing in the order
itself says "fraud". Fraud is learnable but not trivial: some instances use a victim's own device
or a proxy in the victim's country, ship to the victim's country, or stay close to normal amounts.

Scenarios (``docs/simulator.md`` states the exact distributions):

* ``card_testing``: 8 + Poisson(12) (≤ 60) small amounts (0.50–5.00) on one stolen card, seconds
  apart, across 1–5 online digital merchants, from one fraudster device; 30 % end with 1–2 large
  "cash-out" orders 0.5–6 h later.
* ``account_takeover``: on an account older than 60 days, 1–5 orders within 3 h from a new device
  (25 %: the victim's own device id, a stolen session), an IP abroad (60 %) and shipping abroad
  (55 %), 2–10 × the customer's typical amount.
* ``compromised_merchant``: episodes of 2–7 days at one mid-sized merchant (sometimes one terminal)
  where extra orders are paid with stolen cards.
* ``stolen_card_spree``: 2 + Poisson(2) (≤ 8) large orders (log-normal, median 350 USD) on one
  stolen card within 1–12 h, from a fresh account or as guest.
* ``high_amount``: one order at 8–30 × the customer's typical amount on the customer's own account,
  half of them from the customer's own device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.simulator.config import DAY_MS, EPISODES, HOUR_MS, MINUTE_MS, rng_for
from training.simulator.rows import Rows, concat_rows, empty_rows, make_rows, or_none
from training.simulator.traffic import event_times, to_currency
from training.simulator.world import (
    CATEGORIES,
    CATEGORY_AMOUNT,
    CATEGORY_SHIPPED,
    COMMON_EMAIL,
    COUNTRIES,
    COUNTRY_FX,
    DISPOSABLE_EMAIL,
    N_HOME,
    RISKY_COUNTRIES,
    World,
    country_names,
    letters,
    random_ips,
)

_CAT = {name: i for i, name in enumerate(CATEGORIES)}
CARD_TESTING_CATEGORIES = (_CAT["digital_goods"], _CAT["gift_cards"], _CAT["entertainment"])
CASH_OUT_CATEGORIES = (_CAT["electronics"], _CAT["gift_cards"])
TAKEOVER_CATEGORIES = (_CAT["electronics"], _CAT["gift_cards"], _CAT["fashion"], _CAT["marketplace"])
SPREE_CATEGORIES = (_CAT["electronics"], _CAT["gift_cards"], _CAT["travel"], _CAT["fashion"], _CAT["marketplace"])
HIGH_AMOUNT_CATEGORIES = (_CAT["electronics"], _CAT["travel"], _CAT["fashion"], _CAT["marketplace"])
TESTING_AMOUNTS = (1.0, 0.5, 2.0, 1.99, 0.99, 5.0)

#: Mean orders per instance, used to turn an order budget into a number of instances.
MEAN_INSTANCE_SIZE: dict[str, float] = {
    "card_testing": 20.45,
    "account_takeover": 2.0,
    "stolen_card_spree": 4.0,
    "high_amount": 1.0,
}
#: Fraud at night: the hourly profile is flattened this much (0 = like legit traffic, 1 = uniform).
FRAUD_HOUR_FLATTEN = 0.5
_RISKY_FIRST = N_HOME  # index of the first risky country in COUNTRIES


@dataclass
class Episode:
    """A compromised merchant (or one of its terminals) for ``[start_day, end_day)``."""

    episode_id: str
    merchant: int
    terminal: int | None
    start_day: int
    end_day: int


@dataclass
class EpisodeBook:
    """Compromised-merchant episodes, day by day; each day's draws come from its own random stream.

    :meth:`at` replays the days before the one asked for, so any process can compute the episodes
    of any day and gets the same answer.
    """

    world: World
    seed: int
    day: int = -1
    active: list[Episode] = field(default_factory=list)
    started: int = 0
    candidates: np.ndarray | None = None

    def at(self, day: int) -> list[Episode]:
        """The episodes active on ``day``."""
        if day < self.day:
            self.day, self.active, self.started = -1, [], 0
        while self.day < day:
            self.day += 1
            self._advance(self.day, rng_for(self.seed, self.day, EPISODES))
        return list(self.active)

    def _advance(self, day: int, rng: np.random.Generator) -> None:
        """Drop ended episodes and start new ones (about two run at any time, at least one)."""
        world = self.world
        self.active = [e for e in self.active if e.end_day > day]
        n_new = int(rng.poisson(2.0 / 4.5))
        if not self.active:
            n_new = max(n_new, 1)
        if self.candidates is None:
            pop = world.mer_pop
            lo, hi = np.quantile(pop, [0.7, 0.97])
            self.candidates = np.flatnonzero((pop >= lo) & (pop <= hi))
            if not len(self.candidates):
                self.candidates = np.arange(world.n_merchants)
        for _ in range(n_new):
            m = int(rng.choice(self.candidates))
            term = None
            if world.mer_term_n[m] > 1 and rng.random() < 0.5:
                term = int(world.mer_term_off[m] + rng.integers(0, world.mer_term_n[m]))
            self.active.append(
                Episode(f"compromised_merchant-e{self.started:05d}", m, term, day, day + int(rng.integers(2, 8)))
            )
            self.started += 1


@dataclass
class DayContext:
    """What every scenario needs for one day."""

    world: World
    day: int
    day_start_ms: int
    rng: np.random.Generator
    eligible: dict[float, np.ndarray] = field(default_factory=dict)

    def victims(self, k: int, min_age_days: float = 0.0) -> np.ndarray:
        """``k`` customers whose account is at least ``min_age_days`` old at the start of the day."""
        eligible = self.eligible.get(min_age_days)
        if eligible is None:
            cutoff = self.day_start_ms - int(min_age_days * DAY_MS)
            eligible = np.flatnonzero(self.world.cust_created_ms < cutoff)
            if not len(eligible):
                eligible = np.arange(self.world.n_customers)
            self.eligible[min_age_days] = eligible
        return self.rng.choice(eligible, size=k)

    def card_of(self, cust: int) -> int:
        """A random card of a customer."""
        w = self.world
        return int(w.cust_card_off[cust] + self.rng.integers(0, w.cust_card_n[cust]))

    def start_time(self, cust: int) -> int:
        """When an instance starts: fraud's flatter hourly profile, in the victim's local time."""
        home = np.array([self.world.cust_home[cust]])
        return int(event_times(self.rng, 1, self.day_start_ms, home, FRAUD_HOUR_FLATTEN)[0])

    def fit(self, *times: np.ndarray) -> tuple[np.ndarray, ...]:
        """Move an instance's times earlier as a whole when it would run past the end of the day.

        The shift is the overshoot plus up to 2 h, so every day is self-contained (no event spills
        into the next day) without piling instances up at midnight.
        """
        last = max(int(t.max()) for t in times if len(t))
        over = last - (self.day_start_ms + DAY_MS - 1)
        if over <= 0:
            return times
        shift = over + int(self.rng.integers(0, 2 * HOUR_MS))
        return tuple(t - shift for t in times)

    def foreign_country(self, home: int, risky_share: float) -> int:
        """A country ≠ ``home``: a risky one with ``risky_share``, else another home country."""
        if self.rng.random() < risky_share:
            return int(_RISKY_FIRST + self.rng.integers(0, len(RISKY_COUNTRIES)))
        return int((home + self.rng.integers(1, N_HOME)) % N_HOME)

    def email(self, disposable_share: float) -> str:
        """An e-mail domain of a fraudster's account."""
        if self.rng.random() < disposable_share:
            return str(DISPOSABLE_EMAIL[int(self.rng.integers(0, len(DISPOSABLE_EMAIL)))])
        return str(COMMON_EMAIL[int(self.rng.integers(0, len(COMMON_EMAIL)))])

    def ids(self, n: int, prefix: str) -> np.ndarray:
        """``n`` fresh identifiers (customers, guests, devices)."""
        return letters(self.rng, n, 12, prefix)


def _shipping(ctx: DayContext, category: np.ndarray, country: int) -> np.ndarray:
    """Shipping country for shipped categories, None for digital ones."""
    return or_none(np.asarray(CATEGORY_SHIPPED)[category], COUNTRIES[country])


def _fraud_rows(
    ctx: DayContext,
    scenario: str,
    scenario_id: str,
    victim: int,
    t: np.ndarray,
    merchant: np.ndarray,
    usd: np.ndarray,
    **cols: object,
) -> Rows:
    """Rows of one instance with the columns every scenario shares."""
    w = ctx.world
    n = len(t)
    amount, currency, amount_usd = to_currency(w, merchant, usd)
    term = w.mer_term_off[merchant] + ctx.rng.integers(0, w.mer_term_n[merchant])
    base: dict[str, object] = {
        "t": t,
        "amount": amount,
        "currency": currency,
        "amount_usd": amount_usd,
        "merchant_id": w.mer_id[merchant],
        "terminal_id": w.term_id[term],
        "category": np.asarray(CATEGORIES, dtype=object)[w.mer_category[merchant]],
        "fraud": True,
        "scenario": scenario,
        "scenario_id": scenario_id,
        "victim": w.cust_id[victim],
    }
    base.update(cols)
    return make_rows(n, **base)


def card_testing(ctx: DayContext, budget: float, prefix: str) -> list[Rows]:
    """Bursts of small amounts on one stolen card across a few online merchants."""
    w, rng = ctx.world, ctx.rng
    out: list[Rows] = []
    for k in range(int(rng.poisson(budget / MEAN_INSTANCE_SIZE["card_testing"]))):
        sid = f"{prefix}-{k:04d}"
        victim = int(ctx.victims(1)[0])
        card = ctx.card_of(victim)
        cc = int(w.card_country[card])
        n = min(60, 8 + int(rng.poisson(12)))
        t = ctx.start_time(victim) + np.cumsum(rng.exponential(rng.uniform(5.0, 30.0) * 1000.0, n)).astype(np.int64)
        m = int(rng.integers(1, 3)) if rng.random() < 0.3 else 0  # cash-out orders with the verified card
        tc = np.sort(t[-1] + (rng.uniform(0.5, 6.0, m) * HOUR_MS).astype(np.int64))
        t, tc = ctx.fit(t, tc)
        group = w.category_group(CARD_TESTING_CATEGORIES)
        shops = group.sample(rng, int(rng.integers(1, 6)))
        merchant = shops[rng.integers(0, len(shops), n)]
        amount = np.where(
            rng.random(n) < 0.5,
            np.asarray(TESTING_AMOUNTS)[rng.integers(0, len(TESTING_AMOUNTS), n)],
            np.round(rng.uniform(0.5, 5.0, n), 2),
        )
        usd = amount / COUNTRY_FX[w.mer_country[merchant]]  # small in the merchant's own currency
        if rng.random() < 0.5:  # one fresh account for the whole burst
            customer = np.full(n, ctx.ids(1, "cus_")[0], dtype=object)
            acct = np.full(n, int(t[0]) - int(rng.integers(1, 60)) * MINUTE_MS, dtype=np.int64)
        else:  # guest checkouts
            customer, acct = ctx.ids(n, "gst_"), t.copy()
        ip_country = ctx.foreign_country(cc, 1.0) if rng.random() < 0.5 else cc
        ips = random_ips(rng, np.full(n if rng.random() < 0.3 else 1, ip_country))
        ip = np.resize(ips, n)
        common: dict[str, object] = {
            "channel": "web",
            "card": w.card_token[card],
            "card_bin": w.card_bin[card],
            "card_country": COUNTRIES[cc],
            "device_id": ctx.ids(1, "dev_")[0],
            "email": ctx.email(0.35),
            "billing": COUNTRIES[cc],
        }
        rows = [
            _fraud_rows(
                ctx, "card_testing", sid, victim, t, merchant, usd,
                customer_id=customer, acct_ms=acct, ip=ip, ip_country=COUNTRIES[ip_country], **common,
            )
        ]  # fmt: skip
        if m:
            mc = w.category_group(CASH_OUT_CATEGORIES).sample(rng, m)
            rows.append(
                _fraud_rows(
                    ctx, "card_testing", sid, victim, tc, mc, rng.lognormal(np.log(400.0), 0.5, m),
                    customer_id=customer[-1], acct_ms=acct[-1], ip=ip[-1], ip_country=COUNTRIES[ip_country],
                    shipping=_shipping(ctx, w.mer_category[mc], cc), **common,
                )
            )  # fmt: skip
        out.extend(rows)
    return out


def account_takeover(ctx: DayContext, budget: float, prefix: str) -> list[Rows]:
    """A fraudster logs into an established account from a new device and ships abroad."""
    w, rng = ctx.world, ctx.rng
    out: list[Rows] = []
    for k in range(int(rng.poisson(budget / MEAN_INSTANCE_SIZE["account_takeover"]))):
        victim = int(ctx.victims(1, min_age_days=60.0)[0])
        home = int(w.cust_home[victim])
        n = 1 + min(4, int(rng.poisson(1.0)))
        (t,) = ctx.fit(ctx.start_time(victim) + np.concatenate(([0], np.sort(rng.integers(0, 3 * HOUR_MS, n - 1)))))
        group = w.category_group(TAKEOVER_CATEGORIES, home if rng.random() < 0.7 else None)
        merchant = group.sample(rng, n)
        usd = w.cust_typical_usd[victim] * rng.uniform(2.0, 10.0, n)
        ip_country = ctx.foreign_country(home, 0.6) if rng.random() < 0.6 else home
        ship = ctx.foreign_country(home, 0.5) if rng.random() < 0.55 else home
        card = int(w.cust_card_off[victim])
        if rng.random() < 0.25:  # a stolen session cookie: the victim's own device id
            device = w.dev_id[int(w.cust_dev_off[victim] + rng.integers(0, w.cust_dev_n[victim]))]
        else:
            device = ctx.ids(1, "dev_")[0]
        out.append(
            _fraud_rows(
                ctx, "account_takeover", f"{prefix}-{k:04d}", victim, t, merchant, usd,
                customer_id=w.cust_id[victim], acct_ms=w.cust_created_ms[victim],
                channel="web" if rng.random() < 0.6 else "app",
                card=w.card_token[card], card_bin=w.card_bin[card], card_country=COUNTRIES[w.card_country[card]],
                ip=random_ips(rng, np.full(n, ip_country)), ip_country=COUNTRIES[ip_country],
                device_id=device, email=w.cust_email[victim], billing=COUNTRIES[home],
                shipping=_shipping(ctx, w.mer_category[merchant], ship), typical_usd=w.cust_typical_usd[victim],
            )
        )  # fmt: skip
    return out


def compromised_merchant(ctx: DayContext, budget: float, episodes: list[Episode]) -> list[Rows]:
    """Extra orders with stolen cards at the merchants (terminals) of the active episodes."""
    w, rng = ctx.world, ctx.rng
    out: list[Rows] = []
    for ep in episodes:
        n = int(rng.poisson(budget / len(episodes)))
        if n == 0:
            continue
        m = ep.merchant
        mcountry = int(w.mer_country[m])
        t = event_times(rng, n, ctx.day_start_ms, np.full(n, mcountry))
        merchant = np.full(n, m)
        cat = int(w.mer_category[m])
        victims = ctx.victims(n)
        cards = w.cust_card_off[victims] + rng.integers(0, w.cust_card_n[victims])
        cc = w.card_country[cards]
        cols: dict[str, object] = {
            "card": w.card_token[cards],
            "card_bin": w.card_bin[cards],
            "card_country": country_names(cc),
        }
        if not w.mer_online[m]:  # counterfeit cards at a physical terminal
            usd = w.cust_typical_usd[victims] * CATEGORY_AMOUNT[cat] * rng.uniform(1.5, 4.0, n)
            cols.update(
                channel="pos", customer_id=w.cust_id[victims], acct_ms=w.cust_created_ms[victims],
                email=w.cust_email[victims], billing=country_names(w.cust_home[victims]),
                typical_usd=w.cust_typical_usd[victims],
            )  # fmt: skip
        else:  # card-not-present fraud pushed through one online shop
            usd = 45.0 * CATEGORY_AMOUNT[cat] * rng.uniform(1.5, 4.0, n)
            guest = rng.random(n) < 0.5
            ipc = np.where(rng.random(n) < 0.3, _RISKY_FIRST + rng.integers(0, len(RISKY_COUNTRIES), n), mcountry)
            cols.update(
                channel="web",
                customer_id=np.where(guest, ctx.ids(n, "gst_"), ctx.ids(n, "cus_")),
                acct_ms=np.where(guest, t, t - rng.integers(HOUR_MS, 10 * DAY_MS, n)),
                ip=random_ips(rng, ipc), ip_country=country_names(ipc), device_id=ctx.ids(n, "dev_"),
                email=np.asarray([ctx.email(0.2) for _ in range(n)], dtype=object), billing=country_names(cc),
                shipping=_shipping(ctx, np.full(n, cat), mcountry),
            )  # fmt: skip
        rows = _fraud_rows(ctx, "compromised_merchant", ep.episode_id, 0, t, merchant, usd, **cols)
        rows["victim"] = w.cust_id[victims]
        if ep.terminal is not None:
            rows["terminal_id"] = np.full(n, w.term_id[ep.terminal], dtype=object)
        out.append(rows)
    return out


def stolen_card_spree(ctx: DayContext, budget: float, prefix: str) -> list[Rows]:
    """Several large orders on one stolen card within hours, from a fresh account or as guest."""
    w, rng = ctx.world, ctx.rng
    out: list[Rows] = []
    for k in range(int(rng.poisson(budget / MEAN_INSTANCE_SIZE["stolen_card_spree"]))):
        victim = int(ctx.victims(1)[0])
        card = ctx.card_of(victim)
        cc = int(w.card_country[card])
        n = min(8, 2 + int(rng.poisson(2.0)))
        span = int(rng.uniform(1.0, 12.0) * HOUR_MS)
        (t,) = ctx.fit(ctx.start_time(victim) + np.concatenate(([0], np.sort(rng.integers(0, span, n - 1)))))
        t0 = int(t[0])
        merchant = w.category_group(SPREE_CATEGORIES, cc if rng.random() < 0.6 else None).sample(rng, n)
        usd = rng.lognormal(np.log(350.0), 0.6, n)
        if rng.random() < 0.6:
            customer = np.full(n, ctx.ids(1, "cus_")[0], dtype=object)
            acct = np.full(n, t0 - int(rng.integers(10 * MINUTE_MS, 3 * DAY_MS)), dtype=np.int64)
        else:
            customer, acct = ctx.ids(n, "gst_"), t.copy()
        ip_country = ctx.foreign_country(cc, 0.6) if rng.random() < 0.5 else cc
        ship = cc if rng.random() < 0.5 else ctx.foreign_country(cc, 0.6)
        devices = ctx.ids(1 if rng.random() < 0.7 else n, "dev_")
        out.append(
            _fraud_rows(
                ctx, "stolen_card_spree", f"{prefix}-{k:04d}", victim, t, merchant, usd,
                customer_id=customer, acct_ms=acct, channel="web" if rng.random() < 0.7 else "app",
                card=w.card_token[card], card_bin=w.card_bin[card], card_country=COUNTRIES[cc],
                ip=random_ips(rng, np.full(n, ip_country)), ip_country=COUNTRIES[ip_country],
                device_id=np.resize(devices, n), email=ctx.email(0.25), billing=COUNTRIES[cc],
                shipping=_shipping(ctx, w.mer_category[merchant], ship),
            )
        )  # fmt: skip
    return out


def high_amount(ctx: DayContext, budget: float, prefix: str) -> list[Rows]:
    """One order far above the customer's usual amount, on the customer's own account (vectorised)."""
    w, rng = ctx.world, ctx.rng
    n = int(rng.poisson(budget / MEAN_INSTANCE_SIZE["high_amount"]))
    if n == 0:
        return []
    victim = ctx.victims(n, min_age_days=30.0)
    home = w.cust_home[victim]
    t = event_times(rng, n, ctx.day_start_ms, home, FRAUD_HOUR_FLATTEN)
    merchant = np.array([w.category_group(HIGH_AMOUNT_CATEGORIES, int(h)).sample(rng, 1)[0] for h in home])
    usd = w.cust_typical_usd[victim] * rng.uniform(8.0, 30.0, n)
    card = w.cust_card_off[victim] + rng.integers(0, w.cust_card_n[victim])
    own = rng.random(n) < 0.5  # the customer's own device (stolen phone, family member …)
    dev = w.cust_dev_off[victim] + rng.integers(0, w.cust_dev_n[victim])
    device = np.where(own, w.dev_id[dev], ctx.ids(n, "dev_"))
    ip = np.where(own, w.dev_ip[dev], random_ips(rng, home))
    abroad = rng.random(n) >= 0.6
    elsewhere = np.where(
        rng.random(n) < 0.5, _RISKY_FIRST + rng.integers(0, len(RISKY_COUNTRIES), n),
        (home + rng.integers(1, N_HOME, n)) % N_HOME,
    )  # fmt: skip
    ship = np.where(abroad, elsewhere, home)
    rows = _fraud_rows(
        ctx, "high_amount", "", 0, t, merchant, usd,
        customer_id=w.cust_id[victim], acct_ms=w.cust_created_ms[victim],
        channel=np.where(rng.random(n) < 0.5, "web", "app").astype(object),
        card=w.card_token[card], card_bin=w.card_bin[card], card_country=country_names(w.card_country[card]),
        ip=ip, ip_country=country_names(np.where(own, w.cust_ip_country[victim], home)), device_id=device,
        email=w.cust_email[victim],
        billing=country_names(home), typical_usd=w.cust_typical_usd[victim],
    )  # fmt: skip
    shipped = np.asarray(CATEGORY_SHIPPED)[w.mer_category[merchant]]
    rows["shipping"] = or_none(shipped, country_names(ship))
    rows["victim"] = w.cust_id[victim]
    rows["scenario_id"] = np.array([f"{prefix}-{k:04d}" for k in range(n)], dtype=object)
    return [rows]


def fraud_orders(ctx: DayContext, budget: float, shares: dict[str, float], episodes: list[Episode]) -> Rows:
    """All fraud rows of a day, for a budget of ``budget`` fraud orders split by ``shares``."""
    prefix = f"{ctx.day:05d}"
    parts = card_testing(ctx, budget * shares["card_testing"], f"card_testing-{prefix}")
    parts += account_takeover(ctx, budget * shares["account_takeover"], f"account_takeover-{prefix}")
    if shares["compromised_merchant"] > 0:
        parts += compromised_merchant(ctx, budget * shares["compromised_merchant"], episodes)
    parts += stolen_card_spree(ctx, budget * shares["stolen_card_spree"], f"stolen_card_spree-{prefix}")
    parts += high_amount(ctx, budget * shares["high_amount"], f"high_amount-{prefix}")
    return concat_rows(parts) if parts else empty_rows()
