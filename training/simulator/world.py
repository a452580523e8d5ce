"""The simulated world: reference data and the entity tables (customers, cards, devices, merchants).

Pure: :func:`build_world` is a function of the config and a numpy ``Generator``. Every table is
a set of numpy arrays indexed by entity number, so per-day traffic is drawn with vectorised
fancy indexing. Identifiers are random letters (never long digit runs, so no identifier can look
like a card number) and carry no hint of whether an entity is ever involved in fraud.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training.simulator.config import DAY_MS, MINUTE_MS, SimulationConfig

Arr = NDArray[Any]

# --- reference data ------------------------------------------------------------------------
#: Countries customers live in and merchants are based in.
HOME_COUNTRIES: tuple[str, ...] = ("US", "CA", "GB", "DE", "FR", "ES", "IT", "NL", "AU", "BR")
HOME_WEIGHTS: tuple[float, ...] = (0.34, 0.07, 0.13, 0.11, 0.09, 0.06, 0.06, 0.04, 0.05, 0.05)
#: Countries that appear only as fraudsters' IP or shipping countries.
RISKY_COUNTRIES: tuple[str, ...] = ("NG", "RO", "RU", "VN", "ID", "UA", "PH", "CN")
COUNTRIES: tuple[str, ...] = HOME_COUNTRIES + RISKY_COUNTRIES
N_HOME = len(HOME_COUNTRIES)

CURRENCY: dict[str, str] = {
    "US": "USD", "CA": "CAD", "GB": "GBP", "DE": "EUR", "FR": "EUR",
    "ES": "EUR", "IT": "EUR", "NL": "EUR", "AU": "AUD", "BR": "BRL",
}  # fmt: skip
#: Units of each currency per US dollar (fixed for the whole simulation).
FX_PER_USD: dict[str, float] = {"USD": 1.0, "CAD": 1.36, "GBP": 0.79, "EUR": 0.92, "AUD": 1.52, "BRL": 5.0}
#: Local time = UTC + offset (hours); daily seasonality is drawn in local time.
UTC_OFFSET_H: tuple[int, ...] = (-5, -5, 0, 1, 1, 1, 1, 1, 10, -3)
#: First IPv4 octets per country (each octet belongs to one country only).
IP_PREFIXES: tuple[tuple[int, int], ...] = (
    (23, 67), (24, 99), (51, 81), (46, 84), (62, 90), (77, 88), (79, 93), (85, 145), (101, 110), (177, 186),
    (102, 105), (5, 86), (95, 178), (113, 171), (36, 114), (91, 176), (112, 122), (111, 223),
)  # fmt: skip

CHANNELS: tuple[str, ...] = ("web", "app", "pos", "phone")
CHANNEL_WEIGHTS: tuple[float, ...] = (0.35, 0.30, 0.30, 0.05)
WEB, APP, POS, PHONE = 0, 1, 2, 3

#: Merchant categories, the typical amount multiplier of each, and whether goods are shipped.
CATEGORIES: tuple[str, ...] = (
    "grocery", "restaurants", "fuel", "fashion", "electronics", "health", "home",
    "digital_goods", "gift_cards", "travel", "entertainment", "marketplace",
)  # fmt: skip
CATEGORY_AMOUNT: tuple[float, ...] = (0.8, 0.6, 0.9, 1.3, 2.5, 0.7, 1.4, 0.4, 1.0, 3.0, 0.5, 1.0)
CATEGORY_SHIPPED: tuple[bool, ...] = (False, False, False, True, True, True, True, False, False, False, False, True)
PHYSICAL_CATEGORY_WEIGHTS: tuple[float, ...] = (0.25, 0.2, 0.1, 0.15, 0.08, 0.12, 0.1, 0, 0, 0, 0, 0)
ONLINE_CATEGORY_WEIGHTS: tuple[float, ...] = (0.03, 0.02, 0, 0.15, 0.13, 0.04, 0.08, 0.12, 0.06, 0.1, 0.1, 0.17)

COMMON_EMAIL: tuple[str, ...] = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "hotmail.com", "proton.me")
COMMON_EMAIL_WEIGHTS: tuple[float, ...] = (0.5, 0.15, 0.12, 0.12, 0.08, 0.03)
LOCAL_EMAIL: tuple[tuple[str, ...], ...] = (
    ("comcast.net", "aol.com"), ("shaw.ca", "rogers.com"), ("btinternet.com", "sky.com"), ("web.de", "gmx.de"),
    ("orange.fr", "free.fr"), ("telefonica.es", "gmail.es"), ("libero.it", "virgilio.it"), ("ziggo.nl", "kpn.nl"),
    ("bigpond.com", "optusnet.com.au"), ("uol.com.br", "bol.com.br"),
)  # fmt: skip
DISPOSABLE_EMAIL: tuple[str, ...] = (
    "mailinator.com",
    "yopmail.com",
    "guerrillamail.com",
    "tempmail.dev",
    "sharklasers.com",
)

assert len(CURRENCY) == N_HOME and len(UTC_OFFSET_H) == N_HOME and len(LOCAL_EMAIL) == N_HOME
assert len(IP_PREFIXES) == len(COUNTRIES)
assert len({o for pair in IP_PREFIXES for o in pair}) == 2 * len(COUNTRIES), "IP prefixes must be unique"

#: Share of customers whose IPs are in another country (VPN exits, people living abroad), and where.
VPN_SHARE = 0.06
VPN_COUNTRIES: tuple[int, ...] = tuple(COUNTRIES.index(c) for c in ("NL", "US", "DE", "GB", "FR", "RO", "UA"))
VPN_WEIGHTS: tuple[float, ...] = (0.3, 0.2, 0.15, 0.15, 0.1, 0.05, 0.05)

#: Hourly profile of orders in local time (index = hour), before normalisation: quiet at night.
HOURLY_PROFILE: tuple[float, ...] = (
    0.9, 0.5, 0.3, 0.2, 0.2, 0.3, 0.7, 1.5, 2.6, 3.6, 4.4, 5.0,
    5.8, 5.8, 5.0, 4.6, 4.6, 5.0, 5.8, 6.4, 6.6, 5.6, 3.8, 2.0,
)  # fmt: skip
#: Weekly factor (Monday … Sunday), mean 1.
WEEKLY_FACTOR: tuple[float, ...] = (0.94, 0.95, 0.97, 1.0, 1.08, 1.14, 0.92)

COUNTRY_CURRENCY: tuple[str, ...] = tuple(CURRENCY[c] for c in HOME_COUNTRIES)
COUNTRY_FX: NDArray[np.float64] = np.array([FX_PER_USD[c] for c in COUNTRY_CURRENCY])


def hour_probabilities(flatten: float = 0.0) -> NDArray[np.float64]:
    """The hourly profile as probabilities; ``flatten`` ∈ [0, 1] mixes in a uniform profile."""
    p = np.asarray(HOURLY_PROFILE, dtype=np.float64)
    p = p / p.sum()
    out: NDArray[np.float64] = (1.0 - flatten) * p + flatten / 24.0
    return out


def _letter_codes(rng: np.random.Generator, n: int, length: int) -> NDArray[Any]:
    codes = rng.integers(97, 123, size=(n, length), dtype=np.uint8)
    return codes.view(f"S{length}").ravel()


def _with_prefix(raw: NDArray[Any], length: int, prefix: str) -> Arr:
    out: Arr = np.char.add(prefix, raw.astype(f"U{length}")).astype(object)
    return out


def letters(rng: np.random.Generator, n: int, length: int, prefix: str) -> Arr:
    """``n`` random identifiers ``prefix`` + ``length`` lowercase letters (object array of str)."""
    if n == 0:
        return np.empty(0, dtype=object)
    return _with_prefix(_letter_codes(rng, n, length), length, prefix)


def unique_letters(rng: np.random.Generator, n: int, length: int, prefix: str) -> Arr:
    """Like :func:`letters`, redrawing any duplicates so every identifier is unique."""
    raw = _letter_codes(rng, n, length)
    while True:
        _, first = np.unique(raw, return_index=True)
        if len(first) == n:
            return _with_prefix(raw, length, prefix)
        dup = np.ones(n, dtype=bool)
        dup[first] = False
        raw[dup] = _letter_codes(rng, int(dup.sum()), length)


def random_ips(rng: np.random.Generator, country: NDArray[np.integer[Any]]) -> Arr:
    """One random IPv4 address per entry of ``country`` (indices into :data:`COUNTRIES`)."""
    n = len(country)
    if n == 0:
        return np.empty(0, dtype=object)
    prefixes = np.asarray(IP_PREFIXES, dtype=np.int64)
    octets = np.column_stack((prefixes[country, rng.integers(0, 2, n)], rng.integers(1, 255, size=(n, 3))))
    text = octets.astype("U3")
    dotted = np.char.add(np.char.add(np.char.add(text[:, 0], "."), np.char.add(text[:, 1], ".")),
                         np.char.add(np.char.add(text[:, 2], "."), text[:, 3]))  # fmt: skip
    out: Arr = dotted.astype(object)
    return out


def country_names(idx: NDArray[np.integer[Any]]) -> Arr:
    """Country codes for indices into :data:`COUNTRIES`."""
    out: Arr = np.asarray(COUNTRIES, dtype=object)[idx]
    return out


@dataclass(frozen=True)
class MerchantGroup:
    """Merchants of one (country, online) kind, with cumulative popularity for sampling."""

    members: NDArray[np.int64]
    cum: NDArray[np.float64]

    def sample(self, rng: np.random.Generator, n: int) -> NDArray[np.int64]:
        """``n`` merchant indices drawn by popularity."""
        u = rng.random(n) * self.cum[-1]
        picked: NDArray[np.int64] = self.members[
            np.minimum(np.searchsorted(self.cum, u, side="right"), len(self.members) - 1)
        ]
        return picked


@dataclass(frozen=True)
class World:
    """Entity tables. ``cust_*`` arrays are indexed by customer, ``mer_*`` by merchant."""

    # customers
    cust_id: Arr
    cust_home: NDArray[np.int64]
    cust_weight: NDArray[np.float64]
    cust_mu: NDArray[np.float64]
    cust_sigma: NDArray[np.float64]
    cust_typical_usd: NDArray[np.float64]
    cust_channel: NDArray[np.int64]
    cust_email: Arr
    cust_created_ms: NDArray[np.int64]
    cust_ip_country: NDArray[np.int64]
    cust_dev_off: NDArray[np.int64]
    cust_dev_n: NDArray[np.int64]
    cust_card_off: NDArray[np.int64]
    cust_card_n: NDArray[np.int64]
    cust_travel_period: NDArray[np.float64]
    cust_travel_len: NDArray[np.float64]
    cust_travel_phase: NDArray[np.float64]
    # devices and cards (flat; a customer's are contiguous)
    dev_id: Arr
    dev_ip: Arr
    card_token: Arr
    card_bin: Arr
    card_country: NDArray[np.int64]
    # merchants and terminals
    mer_id: Arr
    mer_country: NDArray[np.int64]
    mer_online: NDArray[np.bool_]
    mer_category: NDArray[np.int64]
    mer_pop: NDArray[np.float64]
    mer_term_off: NDArray[np.int64]
    mer_term_n: NDArray[np.int64]
    term_id: Arr
    groups: dict[tuple[int, bool], MerchantGroup]
    online_all: MerchantGroup
    cache: dict[tuple[tuple[int, ...], int | None], MerchantGroup] = field(default_factory=dict)

    @property
    def n_customers(self) -> int:
        return len(self.cust_id)

    @property
    def n_merchants(self) -> int:
        return len(self.mer_id)

    def merchant_group(self, country: int, online: bool) -> MerchantGroup:
        """Merchants of a kind in a country, falling back to all online merchants."""
        return self.groups.get((country, online), self.online_all)

    def category_group(self, categories: tuple[int, ...], country: int | None = None) -> MerchantGroup:
        """Online merchants of some categories (optionally in one country), by popularity."""
        key = (categories, country)
        cached = self.cache.get(key)
        if cached is None:
            cached = self.cache[key] = self._category_group(categories, country)
        return cached

    def _category_group(self, categories: tuple[int, ...], country: int | None) -> MerchantGroup:
        mask = self.mer_online & np.isin(self.mer_category, categories)
        if country is not None and (mask & (self.mer_country == country)).any():
            mask &= self.mer_country == country
        if not mask.any():
            return self.online_all
        members = np.flatnonzero(mask)
        return MerchantGroup(members, np.cumsum(self.mer_pop[members]))

    def travel_destination(self, cust: NDArray[np.int64], day: int) -> NDArray[np.int64]:
        """Home-country index where each customer is on ``day``: home, or a trip destination."""
        period = self.cust_travel_period[cust]
        phase = day + self.cust_travel_phase[cust]
        travelling = (period > 0) & (np.mod(phase, np.where(period > 0, period, 1.0)) < self.cust_travel_len[cust])
        trip_no = np.floor_divide(phase, np.where(period > 0, period, 1.0)).astype(np.int64)
        home = self.cust_home[cust]
        dest = (home + 1 + (cust * 31 + trip_no * 17) % (N_HOME - 1)) % N_HOME
        return np.where(travelling, dest, home)


def _offsets(counts: NDArray[np.int64]) -> NDArray[np.int64]:
    return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)


def build_world(cfg: SimulationConfig, rng: np.random.Generator) -> World:
    """Draw the customers, their devices and cards, the merchants and their terminals."""
    nc, nm = cfg.n_customers, cfg.n_merchants
    start = cfg.start_ms

    home = rng.choice(N_HOME, size=nc, p=np.asarray(HOME_WEIGHTS) / sum(HOME_WEIGHTS)).astype(np.int64)
    weight = rng.lognormal(0.0, 0.9, nc)
    mu = rng.normal(np.log(45.0), 0.6, nc)
    sigma = rng.uniform(0.35, 0.85, nc)
    channel = rng.choice(len(CHANNELS), size=nc, p=CHANNEL_WEIGHTS).astype(np.int64)

    # e-mail: common providers, local ones, and a few legit users of disposable domains
    kind = rng.choice(3, size=nc, p=(0.74, 0.24, 0.02))
    common = np.asarray(COMMON_EMAIL, dtype=object)[rng.choice(len(COMMON_EMAIL), size=nc, p=COMMON_EMAIL_WEIGHTS)]
    local_tab = np.asarray(LOCAL_EMAIL, dtype=object)
    local = local_tab[home, rng.integers(0, 2, nc)]
    disposable = np.asarray(DISPOSABLE_EMAIL, dtype=object)[rng.integers(0, len(DISPOSABLE_EMAIL), nc)]
    email = np.where(kind == 0, common, np.where(kind == 1, local, disposable))

    # accounts: most are months to years old (log-uniform 2 days … 8 years); 8 % open during the span
    age_days = np.exp(rng.uniform(np.log(2.0), np.log(3000.0), nc))
    created = start - (age_days * DAY_MS).astype(np.int64)
    new = rng.random(nc) < 0.08
    created[new] = start + (rng.random(int(new.sum())) * cfg.horizon_days * DAY_MS).astype(np.int64)
    created = (created // MINUTE_MS) * MINUTE_MS + rng.integers(0, MINUTE_MS, nc)

    dev_n = rng.choice((1, 2, 3), size=nc, p=(0.5, 0.35, 0.15)).astype(np.int64)
    dev_owner = np.repeat(np.arange(nc), dev_n)
    dev_id = unique_letters(rng, len(dev_owner), 12, "dev_")
    # 6 % of customers browse through a VPN or live abroad: their IPs are in another country
    ip_country = home.copy()
    vpn = rng.random(nc) < VPN_SHARE
    ip_country[vpn] = rng.choice(np.asarray(VPN_COUNTRIES), size=int(vpn.sum()), p=VPN_WEIGHTS)
    dev_ip = random_ips(rng, ip_country[dev_owner])

    card_n = rng.choice((1, 2), size=nc, p=(0.7, 0.3)).astype(np.int64)
    card_owner = np.repeat(np.arange(nc), card_n)
    card_token = unique_letters(rng, len(card_owner), 16, "tok_")
    # 12 BINs per home country; 4 % of cards are issued abroad (expats)
    bins = rng.integers(400000, 560000, size=(N_HOME, 12))
    card_country = home[card_owner].copy()
    abroad = rng.random(len(card_owner)) < 0.04
    card_country[abroad] = rng.integers(0, N_HOME, int(abroad.sum()))
    card_bin = np.array(
        [str(b) for b in bins[card_country, rng.integers(0, 12, len(card_owner))].tolist()], dtype=object
    )

    traveller = rng.random(nc) < 0.3
    period = np.where(traveller, rng.uniform(45.0, 200.0, nc), 0.0)
    trip_len = rng.uniform(2.0, 10.0, nc)
    phase = rng.uniform(0.0, 200.0, nc)

    # merchants: heavy-tailed popularity, a handful of big ones with many terminals
    mer_country = rng.choice(N_HOME, size=nm, p=np.asarray(HOME_WEIGHTS) / sum(HOME_WEIGHTS)).astype(np.int64)
    online = rng.random(nm) < 0.45
    phys_p = np.asarray(PHYSICAL_CATEGORY_WEIGHTS) / sum(PHYSICAL_CATEGORY_WEIGHTS)
    onl_p = np.asarray(ONLINE_CATEGORY_WEIGHTS) / sum(ONLINE_CATEGORY_WEIGHTS)
    category = np.where(
        online, rng.choice(len(CATEGORIES), size=nm, p=onl_p), rng.choice(len(CATEGORIES), size=nm, p=phys_p)
    ).astype(np.int64)
    pop = rng.pareto(1.3, nm) + 1.0
    big = np.argsort(-pop, kind="stable")[: max(1, min(5, nm // 40))]
    pop[big] *= 3.0
    term_n = np.where(online, rng.integers(1, 3, nm), 1 + rng.geometric(0.45, nm)).astype(np.int64)
    term_n = np.minimum(term_n, 12)
    term_n[big] = rng.integers(20, 61, len(big))
    mer_id = np.array([f"mer_{i:05d}" for i in range(nm)], dtype=object)
    term_owner = np.repeat(np.arange(nm), term_n)
    term_k = np.arange(len(term_owner)) - _offsets(term_n)[term_owner]
    term_id = np.array(
        [f"{mer_id[m]}-t{k:02d}" for m, k in zip(term_owner.tolist(), term_k.tolist(), strict=True)], dtype=object
    )

    groups: dict[tuple[int, bool], MerchantGroup] = {}
    for c in range(N_HOME):
        for on in (False, True):
            members = np.flatnonzero((mer_country == c) & (online == on))
            if len(members):
                groups[(c, on)] = MerchantGroup(members, np.cumsum(pop[members]))
    online_members = np.flatnonzero(online) if online.any() else np.arange(nm)
    online_all = MerchantGroup(online_members, np.cumsum(pop[online_members]))
    # every home country needs physical merchants (travellers shop there): borrow from the global pool
    for c in range(N_HOME):
        for on in (False, True):
            if (c, on) not in groups:
                members = np.flatnonzero(online == on) if (online == on).any() else np.arange(nm)
                groups[(c, on)] = MerchantGroup(members, np.cumsum(pop[members]))

    return World(
        cust_id=unique_letters(rng, nc, 12, "cus_"),
        cust_home=home,
        cust_weight=weight,
        cust_mu=mu,
        cust_sigma=sigma,
        cust_typical_usd=np.exp(mu + sigma**2 / 2.0),
        cust_channel=channel,
        cust_email=email,
        cust_created_ms=created,
        cust_ip_country=ip_country,
        cust_dev_off=_offsets(dev_n),
        cust_dev_n=dev_n,
        cust_card_off=_offsets(card_n),
        cust_card_n=card_n,
        cust_travel_period=period,
        cust_travel_len=trip_len,
        cust_travel_phase=phase,
        dev_id=dev_id,
        dev_ip=dev_ip,
        card_token=card_token,
        card_bin=card_bin,
        card_country=card_country,
        mer_id=mer_id,
        mer_country=mer_country,
        mer_online=online,
        mer_category=category,
        mer_pop=pop,
        mer_term_off=_offsets(term_n),
        mer_term_n=term_n,
        term_id=term_id,
        groups=groups,
        online_all=online_all,
    )
