"""One simulated day, start to finish: rows → sorted → encoded events. Pure and self-contained.

A day depends only on the config and the day number (fraud instances never spill into the next
day; compromised-merchant episodes are replayed from their own per-day random streams), so days
can be encoded in any process, in any order, and merged into one identical stream.

The result, :class:`DayOutput`, holds the encoded orders in emission order (event time, shuffled
within ``reorder_window_s``), the labels each order will receive and the fraud marks for the
ground truth. It travels between processes as msgpack (no pickle).
"""

from __future__ import annotations

import datetime as dt

import msgspec
import numpy as np

from contracts.events import Item, Label, LabelKind, Order, Payment, encode
from training.simulator.config import DAY_MS, DECORATE, EMIT, FRAUD, LEGIT, RUN, WORLD, SimulationConfig, rng_for
from training.simulator.labels import decorate
from training.simulator.rows import Rows, concat_rows, empty_rows, n_rows, take_rows
from training.simulator.scenarios import DayContext, EpisodeBook, fraud_orders
from training.simulator.traffic import legit_orders
from training.simulator.world import WEEKLY_FACTOR, World, build_world, letters

_UTC = dt.UTC
_encode = msgspec.json.Encoder().encode
#: Row columns the encoder does not need.
_UNUSED = frozenset({"amount_usd", "typical_usd"})
_fromts = dt.datetime.fromtimestamp


def to_datetime(ms: int) -> dt.datetime:
    """Epoch milliseconds → aware UTC datetime."""
    return _fromts(ms / 1000.0, _UTC)


def run_tag(seed: int) -> str:
    """Four letters derived from the seed, part of every id (runs with different seeds never collide)."""
    return str(letters(rng_for(seed, RUN), 1, 4, "")[0])


class FraudMark(msgspec.Struct, array_like=True, frozen=True):
    """A fraud order of the day: where it is and what the truth file says about it."""

    index: int
    order_id: str
    scenario: str
    scenario_id: str
    victim: str
    card: str
    merchant_id: str
    terminal_id: str
    amount: float
    currency: str


class LabelMark(msgspec.Struct, array_like=True, frozen=True):
    """A label of an order of the day, encoded, with its label time (epoch ms)."""

    index: int
    label_time: int
    source: str
    label: str
    value: bytes


class DayOutput(msgspec.Struct, array_like=True):
    """A day's events in emission order (see the module docstring)."""

    day: int
    terminals: int
    times: list[int]
    keys: list[bytes]
    values: list[bytes]
    frauds: list[FraudMark]
    labels: list[LabelMark]


_day_encoder = msgspec.msgpack.Encoder()
_day_decoder = msgspec.msgpack.Decoder(DayOutput)


def pack(out: DayOutput) -> bytes:
    """msgpack bytes of a day (for crossing a process boundary)."""
    return _day_encoder.encode(out)


def unpack(raw: bytes) -> DayOutput:
    """Inverse of :func:`pack`."""
    return _day_decoder.decode(raw)


class DayEncoder:
    """Builds the world once, then encodes any day of the simulation."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.world: World = build_world(config, rng_for(config.seed, WORLD))
        self.episodes = EpisodeBook(self.world, config.seed)
        self.tag = run_tag(config.seed)
        self._acct: dict[int, dt.datetime] = {}

    def rows(self, day: int) -> Rows:
        """Every order row of ``day`` (legit + fraud, decorated), unsorted, within the day."""
        cfg, world = self.config, self.world
        day_start = cfg.start_ms + day * DAY_MS
        weekday = (cfg.start + dt.timedelta(days=day)).weekday()
        expected = cfg.orders_per_day * WEEKLY_FACTOR[weekday]
        rng = rng_for(cfg.seed, day, LEGIT)
        legit = legit_orders(world, day, day_start, int(rng.poisson(expected * (1.0 - cfg.fraud_rate))), rng)
        shares = cfg.mix.normalised()
        fraud = empty_rows()
        if cfg.fraud_rate > 0:
            active = self.episodes.at(day) if shares["compromised_merchant"] > 0 else []
            ctx = DayContext(world, day, day_start, rng_for(cfg.seed, day, FRAUD))
            fraud = fraud_orders(ctx, expected * cfg.fraud_rate, shares, active)
        rows = concat_rows([legit, fraud])
        end = cfg.end_ms
        if end is not None and end < day_start + DAY_MS:
            rows = take_rows(rows, rows["t"] < end)
        decorate(rows, cfg.review_rate, rng_for(cfg.seed, day, DECORATE))
        return rows

    def encode_day(self, day: int) -> DayOutput:
        """The events of ``day`` in emission order."""
        cfg = self.config
        rows = self.rows(day)
        n = n_rows(rows)
        rng = rng_for(cfg.seed, day, EMIT)
        by_time = np.argsort(rows["t"], kind="stable")
        # order ids follow event time; the emission order is shuffled within the reorder window
        jitter = (rng.random(n) * cfg.reorder_window_s * 1000.0).astype(np.int64) if cfg.reorder_window_s else 0
        emit = np.argsort(rows["t"][by_time] + jitter, kind="stable")
        return self._encode(day, take_rows(rows, by_time[emit]), emit.tolist())

    def _encode(self, day: int, rows: Rows, rank: list[int]) -> DayOutput:
        c = {name: col.tolist() for name, col in rows.items() if name not in _UNUSED}
        skus = (c["sku0"], c["sku1"], c["sku2"])
        qtys = (c["qty0"], c["qty1"], c["qty2"])
        prices = (c["price0"], c["price1"], c["price2"])
        scen, sid, victim = c["scenario"], c["scenario_id"], c["victim"]
        rev_delay, rev_fraud, fdelay = c["review_delay"], c["review_fraud"], c["fraud_delay"]
        want_labels = self.config.labels != "none"
        acct_cache = self._acct
        if len(acct_cache) > 500_000:
            acct_cache.clear()
        prefix = f"ord_{self.tag}{day:05d}_"
        keys: list[bytes] = []
        values: list[bytes] = []
        frauds: list[FraudMark] = []
        labels: list[LabelMark] = []
        hot = zip(
            c["t"], c["customer_id"], c["acct_ms"], c["amount"], c["currency"], c["merchant_id"], c["terminal_id"],
            c["channel"], c["card"], c["card_bin"], c["card_country"], c["ip"], c["ip_country"], c["device_id"],
            c["email"], c["billing"], c["shipping"], c["category"], c["n_items"], c["fraud"], c["fraud_source"],
            c["review"], strict=True,
        )  # fmt: skip
        for i, (t, cust, acct, amount, cur, mid, tid, chan, card, cbin, ccty, ip, ipc, dev, email, bill, ship, cat,
                k, fraud, fsrc, rev) in enumerate(hot):  # fmt: skip
            created = acct_cache.get(acct)
            if created is None:
                created = acct_cache[acct] = _fromts(acct / 1000.0, _UTC)
            oid = f"{prefix}{rank[i]:07d}"
            items = (
                [
                    Item(sku=f"{cat}-{skus[j][i]:05d}", category=cat, quantity=qtys[j][i], unit_price=prices[j][i])
                    for j in range(k)
                ]
                if k
                else None
            )
            order = Order(
                order_id=oid,
                event_time=_fromts(t / 1000.0, _UTC),
                customer_id=cust,
                amount=amount,
                currency=cur,
                account_created_at=created,
                merchant_id=mid,
                terminal_id=tid,
                channel=chan,
                payment=Payment(method="card", card_fingerprint=card, card_bin=cbin, card_country=ccty),
                ip_address=ip,
                ip_country=ipc,
                device_id=dev,
                email_domain=email,
                billing_country=bill,
                shipping_country=ship,
                items=items,
            )
            keys.append(cust.encode())
            values.append(_encode(order))
            if fraud:
                frauds.append(FraudMark(i, oid, scen[i], sid[i], victim[i], card, mid, tid, amount, cur))
            if want_labels:
                if fsrc is not None:
                    lt = t + fdelay[i]
                    label = Label(order_id=oid, label="fraud", source=fsrc, label_time=to_datetime(lt),
                                  customer_id=cust, merchant_id=mid)  # fmt: skip
                    labels.append(LabelMark(i, lt, fsrc, "fraud", encode(label)))
                if rev:
                    lt = t + rev_delay[i]
                    verdict: LabelKind = "fraud" if rev_fraud[i] else "legit"
                    label = Label(order_id=oid, label=verdict, source="review", label_time=to_datetime(lt),
                                  customer_id=cust, merchant_id=mid)  # fmt: skip
                    labels.append(LabelMark(i, lt, "review", verdict, encode(label)))
        return DayOutput(day, len(self.world.term_id), c["t"], keys, values, frauds, labels)


# -- worker-process entry point --------------------------------------------------------------
_worker: tuple[bytes, DayEncoder] | None = None
_config_decoder = msgspec.json.Decoder(SimulationConfig)


def encode_day_packed(config_json: bytes, day: int) -> bytes:
    """Worker entry point: the packed :class:`DayOutput` of ``day`` (the world is built once per process)."""
    global _worker
    if _worker is None or _worker[0] != config_json:
        _worker = (config_json, DayEncoder(_config_decoder.decode(config_json)))
    return pack(_worker[1].encode_day(day))
