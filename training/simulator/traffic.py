"""Legitimate traffic for one simulated day, vectorised.

Besides ordinary purchases it deliberately contains legit orders that *look* odd, so a model
cannot equate "unusual" with "fraud": travellers paying abroad (foreign IP and merchant country),
big one-off purchases, new devices, gifts shipped abroad, guest checkouts, brand-new accounts,
cards issued abroad and quick repeat purchases.
"""

from __future__ import annotations

import numpy as np

from training.simulator.config import DAY_MS, MINUTE_MS
from training.simulator.rows import Rows, concat_rows, make_rows, or_none, take_rows
from training.simulator.world import (
    APP,
    CATEGORIES,
    CATEGORY_AMOUNT,
    CATEGORY_SHIPPED,
    CHANNEL_WEIGHTS,
    CHANNELS,
    COUNTRY_CURRENCY,
    COUNTRY_FX,
    N_HOME,
    POS,
    UTC_OFFSET_H,
    WEB,
    World,
    country_names,
    hour_probabilities,
    letters,
    random_ips,
)

#: Share of legit orders that are big one-off purchases (amount × U(5, 20)).
BIG_PURCHASE_SHARE = 0.005
#: Share of web/app orders from a device the customer never used before.
NEW_DEVICE_SHARE = 0.03
#: Share of web orders placed as a guest (no account; a fresh customer_id each time).
GUEST_SHARE = 0.05
#: Share of shipped online orders sent to another country (gifts).
GIFT_ABROAD_SHARE = 0.05
#: Share of web/app orders that start a shopping session (1–4 more purchases within minutes).
SESSION_SHARE = 0.06
#: Orders per session-starting order on average (1 + 0.06 × share of web/app × (1 + 0.45 + 0.45² + 0.45³)).
SESSION_GROWTH = 1.065
#: Share of accounts opened during the span whose owner buys within the first hour.
SIGNUP_PURCHASE_SHARE = 0.6


def event_times(
    rng: np.random.Generator, n: int, day_start_ms: int, country: np.ndarray, flatten: float = 0.0
) -> np.ndarray:
    """Event times (epoch ms) in ``[day_start_ms, day_start_ms + 24 h)``, following the hourly profile
    in the local time of ``country`` (indices into the home countries; any start time of day)."""
    hours = rng.choice(24, size=n, p=hour_probabilities(flatten))
    local_ms = hours * 3_600_000 + (rng.random(n) * 3_600_000).astype(np.int64)
    offset = np.asarray(UTC_OFFSET_H, dtype=np.int64)[country] * 3_600_000
    utc_time_of_day = np.mod(local_ms - offset, DAY_MS)
    times: np.ndarray = day_start_ms + np.mod(utc_time_of_day - day_start_ms % DAY_MS, DAY_MS)
    return times


def to_currency(world: World, merchant: np.ndarray, usd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(amount, currency, amount_usd) in each merchant's currency, rounded to cents (≥ 0.5 units)."""
    mc = world.mer_country[merchant]
    fx = COUNTRY_FX[mc]
    amount = np.maximum(np.round(usd * fx, 2), 0.5)
    return amount, np.asarray(COUNTRY_CURRENCY, dtype=object)[mc], amount / fx


def legit_orders(world: World, day: int, day_start_ms: int, n: int, rng: np.random.Generator) -> Rows:
    """About ``n`` legit orders of the day: sign-up purchases, ordinary orders and shopping sessions."""
    day_end = day_start_ms + DAY_MS
    # accounts opened today: most buy something right away
    opened = np.flatnonzero((world.cust_created_ms >= day_start_ms) & (world.cust_created_ms < day_end))
    signup = opened[rng.random(len(opened)) < SIGNUP_PURCHASE_SHARE]
    signup_t = world.cust_created_ms[signup] + rng.integers(2 * MINUTE_MS, 60 * MINUTE_MS, len(signup))
    keep = signup_t < day_end
    signup, signup_t = signup[keep], signup_t[keep]
    # the rest of the day's budget: first orders of sessions (sessions add ~SESSION_GROWTH more)
    n = max(0, int(round(n / SESSION_GROWTH)) - len(signup))
    cum = np.cumsum(np.where(world.cust_created_ms < day_start_ms, world.cust_weight, 0.0))
    cust = np.minimum(np.searchsorted(cum, rng.random(n) * cum[-1], side="right"), world.n_customers - 1)
    cust = np.concatenate((cust, signup))
    first = np.zeros(len(cust), dtype=bool)
    first[n:] = True
    n = len(cust)

    home = world.cust_home[cust]
    loc = world.travel_destination(cust, day)
    travelling = (loc != home) & ~first

    channel = np.where(
        rng.random(n) < 0.7, world.cust_channel[cust], rng.choice(len(CHANNELS), size=n, p=CHANNEL_WEIGHTS)
    )
    channel = np.where(travelling, np.where(rng.random(n) < 0.65, POS, APP), channel)
    channel = np.where(first, np.where(rng.random(n) < 0.6, WEB, APP), channel)
    loc = np.where(first, home, loc)
    online = channel != POS

    # merchant: physical → where the customer is; online → home country (88 %) or anywhere
    merchant = np.empty(n, dtype=np.int64)
    cross = online & (rng.random(n) < 0.12)
    group = np.where(cross, -1, np.where(online, home, loc) * 2 + online)
    by_group = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[by_group], np.arange(-1, 2 * N_HOME + 1))
    for g in range(-1, 2 * N_HOME):
        idx = by_group[bounds[g + 1] : bounds[g + 2]]
        if len(idx):
            pool = world.online_all if g < 0 else world.merchant_group(g // 2, bool(g % 2))
            merchant[idx] = pool.sample(rng, len(idx))
    terminal = world.mer_term_off[merchant] + rng.integers(0, world.mer_term_n[merchant])
    category = world.mer_category[merchant]

    t = event_times(rng, n, day_start_ms, loc)
    t[first] = signup_t

    usd = np.exp(world.cust_mu[cust] + world.cust_sigma[cust] * rng.standard_normal(n))
    usd *= np.asarray(CATEGORY_AMOUNT)[category]
    big = rng.random(n) < BIG_PURCHASE_SHARE
    usd[big] *= rng.uniform(5.0, 20.0, int(big.sum()))
    amount, currency, amount_usd = to_currency(world, merchant, usd)

    card = world.cust_card_off[cust] + ((world.cust_card_n[cust] == 2) & (rng.random(n) < 0.2))

    device_based = (channel == WEB) | (channel == APP)
    dev = world.cust_dev_off[cust] + rng.integers(0, world.cust_dev_n[cust])
    device_id = world.dev_id[dev].copy()
    new_dev = device_based & (rng.random(n) < NEW_DEVICE_SHARE)
    device_id[new_dev] = letters(rng, int(new_dev.sum()), 12, "dev_")
    ip = world.dev_ip[dev].copy()
    ip_where = np.where(travelling, loc, world.cust_ip_country[cust])
    other_ip = (rng.random(n) < 0.15) | travelling | new_dev
    ip[other_ip] = random_ips(rng, ip_where[other_ip])
    device_id[~device_based] = None
    ip[~device_based] = None
    ip_country = or_none(device_based, country_names(ip_where))

    shipped = online & np.asarray(CATEGORY_SHIPPED)[category]
    ship_to = home.copy()
    gift = shipped & (rng.random(n) < GIFT_ABROAD_SHARE)
    ship_to[gift] = (home[gift] + rng.integers(1, N_HOME, int(gift.sum()))) % N_HOME
    shipping = or_none(shipped, country_names(ship_to))

    customer_id = world.cust_id[cust].copy()
    acct = world.cust_created_ms[cust].copy()
    typical = world.cust_typical_usd[cust].copy()
    guest = (channel == WEB) & ~first & (rng.random(n) < GUEST_SHARE)
    customer_id[guest] = letters(rng, int(guest.sum()), 12, "gst_")
    acct[guest] = t[guest]
    typical[guest] = np.nan

    rows = make_rows(
        n,
        t=t,
        customer_id=customer_id,
        acct_ms=acct,
        amount=amount,
        currency=currency,
        merchant_id=world.mer_id[merchant],
        terminal_id=world.term_id[terminal],
        channel=np.asarray(CHANNELS, dtype=object)[channel],
        card=world.card_token[card],
        card_bin=world.card_bin[card],
        card_country=country_names(world.card_country[card]),
        ip=ip,
        ip_country=ip_country,
        device_id=device_id,
        email=world.cust_email[cust],
        billing=country_names(home),
        shipping=shipping,
        category=np.asarray(CATEGORIES, dtype=object)[category],
        amount_usd=amount_usd,
        typical_usd=typical,
    )

    # shopping sessions: 1–4 more purchases by the same customer, device and card at the same
    # merchant, each within 25 minutes of the previous one
    session = np.flatnonzero(device_based & ~guest & (rng.random(n) < SESSION_SHARE))
    parts = [rows]
    last = rows
    idx = session
    for _ in range(4):
        if not len(idx):
            break
        again = take_rows(last, idx)
        m = len(idx)
        again["t"] = again["t"] + rng.integers(MINUTE_MS // 2, 25 * MINUTE_MS, m)
        fx = again["amount"] / again["amount_usd"]
        again["amount"] = np.maximum(np.round(again["amount"] * rng.lognormal(-0.3, 0.6, m), 2), 0.5)
        again["amount_usd"] = again["amount"] / fx
        parts.append(take_rows(again, again["t"] < day_end))
        last = again
        idx = np.flatnonzero(rng.random(m) < 0.45)
    return concat_rows(parts)
