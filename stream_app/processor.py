"""The orders hot path, independent of the transport: a micro-batch of records in, outputs out.

For one batch (records of any partitions, each partition's records in offset order):

1. decode every record (msgspec, a few µs each); a bad one goes to the error policy
   (dead letter by default) and never stalls the batch;
2. drop in-batch repeats of an ``order_id`` (they are answered with the first one's decision);
3. decide the unique orders in **one** call to the shared pipeline with ``apply=True`` — one
   batched feature update + read, one batched model call, rules per order;
   ``FeatureStoreUnavailable`` propagates (the caller retries the batch: feature updates must
   not be skipped); any other exception is isolated by bisection to the event(s) that cause it,
   which are dead-lettered with stage ``processing`` while the rest of the batch goes on;
4. claim the decided ids in the ledger (pending, with each record's position; the caller confirms
   them once the outputs are acknowledged: :meth:`OrdersProcessor.published`) and build the outputs:
   one decision per order on the
   ``decisions`` topic and one action per non-allow decision on ``actions``, both keyed by
   ``order_id``; repeats carry the header ``fraudscore-duplicate: 1`` (on Kinesis, which has no
   headers, the sink turns it into ``"duplicate": true`` in the record's JSON).

Nothing here commits: the caller publishes :attr:`BatchResult.outputs`, waits until they are
durable, and only then commits the batch's offsets / checkpoints.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from contracts.config import TopicNames
from contracts.events import Action, Decision, Order, decode_label, decode_order, encode
from contracts.events import Label as LabelEvent
from contracts.exceptions import CardNumberError, ContractError
from feature_state.exceptions import FeatureStoreUnavailable
from feature_state.stores.base import FeatureStore
from monitoring import metrics
from scoring.pipeline import DecisionPipeline
from stream_app import metrics as smetrics
from stream_app.deadletter import Stage, for_record, to_out_record
from stream_app.exceptions import StreamError, WebhookDeliveryFailed
from stream_app.ledger import DecisionLedger
from stream_app.policy import SKIPPED, ErrorAction, ErrorPolicy, dead_letter_everything
from stream_app.records import DUPLICATE_HEADER as DUPLICATE_HEADER  # re-exported (tests, consumers)
from stream_app.records import Outputs, OutRecord, SourceRecord
from stream_app.store_view import LateCapturingStore

log = logging.getLogger(__name__)

_DUP = ((DUPLICATE_HEADER, b"1"),)
SourceKind = Literal["kafka", "kinesis"]


class LateEventError(StreamError):
    """The feature store refused an order as older than its entity's watermark minus the lateness."""


class PolicyStop(StreamError):
    """The error policy asked to stop on an event; the batch is not committed."""


def action_for(decision: Decision) -> Action | None:
    """The action a decision triggers (none for ``allow``)."""
    if decision.decision == "allow":
        return None
    rule = next(
        (m.name for m in decision.matched_rules
         if m.mode == "active" and m.action == decision.decision and not m.error),
        None,
    )
    if rule:
        reason = None
    elif decision.score is not None:
        reason = f"model score {decision.score:.3f}"
    else:
        reason = "fallback: " + ",".join(decision.degraded_reasons or ["no score"])
    return Action(
        order_id=decision.order_id,
        action=decision.decision,
        decided_at=decision.decided_at or decision.event_time,  # type: ignore[arg-type]
        rule=rule,
        reason=reason,
    )


@dataclass
class BatchResult:
    """What one batch produced."""

    outputs: Outputs = field(default_factory=Outputs)
    orders: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    skipped: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    #: latest event time (epoch s) seen per source partition (for event-time alignment)
    event_time: dict[int | str, float] = field(default_factory=dict)


class _Failures:
    """Applies the error policy to failed records of one batch."""

    def __init__(self, policy: ErrorPolicy, dead_letter_topic: str, source: SourceKind, result: BatchResult) -> None:
        self.policy = policy
        self.topic = dead_letter_topic
        self.source = source
        self.result = result

    def __call__(self, exc: BaseException, rec: SourceRecord, stage: Stage) -> None:
        action = self.policy(exc, rec, stage)
        if action is ErrorAction.STOP:
            raise PolicyStop(f"error policy stopped on {rec.stream}[{rec.partition}]@{rec.position}: "
                             f"{type(exc).__name__} ({stage})") from exc
        if action is ErrorAction.SKIP:
            SKIPPED.labels(rec.stream, stage).inc()
            log.warning("skipped %s[%s]@%s (stage %s): %s", rec.stream, rec.partition, rec.position, stage,
                        type(exc).__name__)
            self.result.skipped += 1
            return
        # A webhook delivery knows how many attempts it made; every other failure is one attempt.
        attempts = exc.attempts if isinstance(exc, WebhookDeliveryFailed) else 1
        dl = for_record(exc, rec, stage, source=self.source, attempts=attempts)
        self.result.outputs.add(self.topic, to_out_record(dl))
        metrics.DEAD_LETTERS.labels(rec.stream, type(exc).__name__).inc()
        self.result.dead_letters += 1


class OrdersProcessor:
    """Decides micro-batches of order records through the shared :class:`DecisionPipeline`."""

    def __init__(
        self,
        pipeline: DecisionPipeline,
        topics: TopicNames,
        ledger: DecisionLedger,
        *,
        policy: ErrorPolicy = dead_letter_everything,
        source: SourceKind = "kafka",
    ) -> None:
        # The same pipeline (models, rules and store shared), seen through a store view that keeps
        # the late events of each apply so they can be dead-lettered.
        self.store_view = LateCapturingStore(pipeline.store)
        self.pipeline = copy.copy(pipeline)
        self.pipeline.store = self.store_view
        self.topics = topics
        self.ledger = ledger
        self.policy = policy
        self.source = source
        # Claims made by an attempt whose publish failed: a retry of the same batch reuses them,
        # so a retried batch is not mistaken for a redelivery.
        self._claimed: dict[str, bool] = {}
        # Ids published unmarked by this attempt (a batch may be processed in several chunks).
        self._unmarked: set[str] = set()
        #: event time → decision (ms) of the most recent orders, for the live summary
        self.recent_latency_ms: deque[float] = deque(maxlen=5000)
        #: record append → feature update applied (ms) of the most recent orders
        self.recent_freshness_ms: deque[float] = deque(maxlen=200_000)

    async def process(self, records: Sequence[SourceRecord]) -> BatchResult:
        """Decide one batch; raises ``FeatureStoreUnavailable`` / ``SinkError`` for the caller to retry."""
        result = BatchResult()
        fail = _Failures(self.policy, self.topics.dead_letters, self.source, result)
        t0 = time.perf_counter()
        orders: list[Order] = []
        recs: list[SourceRecord] = []
        first: dict[str, int] = {}
        repeats: list[int] = []
        seen = result.event_time
        for rec in records:
            try:
                order = decode_order(rec.value)
            except CardNumberError as exc:
                fail(exc, rec, "card_number")
                continue
            except ContractError as exc:
                fail(exc, rec, "decode")
                continue
            ts = order.event_time.timestamp()
            if ts > seen.get(rec.partition, -1.0):
                seen[rec.partition] = ts
            idx = first.get(order.order_id)
            if idx is None:
                first[order.order_id] = len(orders)
                orders.append(order)
                recs.append(rec)
            else:
                repeats.append(idx)
        t1 = time.perf_counter()
        decided = await self._decide(orders, recs, fail)
        t2 = time.perf_counter()
        self._observe_freshness([recs[i] for i, _ in decided], self.recent_freshness_ms)
        pending = self._claimed
        unknown: list[str] = []
        positions: list[str] = []
        for i, d in decided:
            if d.order_id not in pending:
                rec = recs[i]
                unknown.append(d.order_id)
                positions.append(f"{rec.stream}:{rec.partition}:{rec.position}")
        if unknown:
            for oid, new in zip(unknown, await self.ledger.claim(unknown, positions), strict=True):
                pending[oid] = new
        by_index: dict[int, Decision] = {}
        dec_out: list[OutRecord] = []
        act_out: list[OutRecord] = []
        counts = result.decisions
        now = time.time()
        unmarked = self._unmarked
        for i, d in decided:
            by_index[i] = d
            new = pending[d.order_id] and d.order_id not in unmarked
            if new:
                unmarked.add(d.order_id)
            self._emit(d, new, dec_out, act_out)
            if new:
                counts[d.decision] = counts.get(d.decision, 0) + 1
                if d.event_time is not None:
                    lag = max(0.0, now - d.event_time.timestamp())
                    metrics.EVENT_TO_DECISION.observe(lag)
                    self.recent_latency_ms.append(lag * 1000.0)
            else:
                result.duplicates += 1
        for idx in repeats:
            first_decision = by_index.get(idx)
            if first_decision is not None:
                self._emit(first_decision, False, dec_out, act_out)
                result.duplicates += 1
        result.outputs.extend(self.topics.decisions, dec_out)
        result.outputs.extend(self.topics.actions, act_out)
        result.orders = len(decided)
        if result.duplicates:
            smetrics.DUPLICATES.inc(result.duplicates)
        smetrics.BATCH_SECONDS.labels("decode").observe(t1 - t0)
        smetrics.BATCH_SECONDS.labels("decide").observe(t2 - t1)
        metrics.BATCH_SIZE.observe(len(orders))
        return result

    def begin_attempt(self) -> None:
        """A (re)try of a batch starts: nothing of it is published yet."""
        self._unmarked.clear()

    async def published(self) -> None:
        """The batch's outputs are durable (acknowledged): confirm its claims in the ledger, so a
        replay of these records (a commit lost to a rebalance) publishes them marked. A ledger
        failure here is logged, not retried: the offsets are committed next, and only a replay of
        the same records would see the pending claims (it would republish them unmarked)."""
        mine = list(self._unmarked)  # exactly what this attempt published unmarked
        if not mine:
            return
        try:
            await self.ledger.confirm(mine)
        except StreamError as exc:
            smetrics.LEDGER_CONFIRM_FAILED.inc(len(mine))
            log.warning("could not confirm %d decided orders in the ledger: %s", len(mine), exc)

    def committed(self) -> None:
        """The last batch's outputs are durable: forget its claims."""
        self._claimed.clear()
        self._unmarked.clear()

    @staticmethod
    def _emit(d: Decision, new: bool, dec_out: list[OutRecord], act_out: list[OutRecord]) -> None:
        key = d.order_id.encode()
        headers = () if new else _DUP
        dec_out.append(OutRecord(key, encode(d), headers))
        act = action_for(d)
        if act is not None:
            act_out.append(OutRecord(key, encode(act), headers))

    async def _decide(
        self, orders: list[Order], recs: list[SourceRecord], fail: _Failures
    ) -> list[tuple[int, Decision]]:
        """(index, decision) for every order that could be decided; isolates poison events."""
        if not orders:
            return []
        try:
            decisions = await self.pipeline.decide(orders, source="stream", apply=True)
            late = self.store_view.late
        except FeatureStoreUnavailable:
            raise
        except StreamError:
            raise
        except Exception as exc:
            if len(orders) == 1:
                log.exception("processing failed for %s[%s]@%s", recs[0].stream, recs[0].partition, recs[0].position)
                fail(exc, recs[0], "processing")
                return []
            mid = len(orders) // 2
            left = await self._decide(orders[:mid], recs[:mid], fail)
            right = await self._decide(orders[mid:], recs[mid:], fail)
            return left + [(i + mid, d) for i, d in right]
        if late:
            refused = {}
            for ev in late:
                idx = getattr(ev, "index", None)
                if isinstance(idx, int) and 0 <= idx < len(orders):
                    reason = ev.reason() if hasattr(ev, "reason") else "late event"
                    refused[idx] = reason
            for idx, reason in refused.items():
                fail(LateEventError(reason), recs[idx], "late")
            return [(i, d) for i, d in enumerate(decisions) if i not in refused]
        return list(enumerate(decisions))

    @staticmethod
    def _observe_freshness(recs: list[SourceRecord], recent: deque[float]) -> None:
        now_ms = time.time() * 1000.0
        observe = smetrics.FRESHNESS.observe
        for rec in recs:
            if rec.timestamp_ms is not None:
                ms = max(0.0, now_ms - rec.timestamp_ms)
                observe(ms / 1000.0)
                recent.append(ms)


class LabelsProcessor:
    """Applies labelled outcomes to the feature store (label-derived features), in batches."""

    def __init__(self, store: FeatureStore, topics: TopicNames, *, policy: ErrorPolicy = dead_letter_everything,
                 source: SourceKind = "kafka") -> None:
        self.store = store
        self.topics = topics
        self.policy = policy
        self.source = source

    async def process(self, records: Sequence[SourceRecord]) -> BatchResult:
        result = BatchResult()
        fail = _Failures(self.policy, self.topics.dead_letters, self.source, result)
        labels: list[LabelEvent] = []
        recs: list[SourceRecord] = []
        seen = result.event_time  # per partition, for the consumer's event-time alignment (as for orders)
        for rec in records:
            try:
                label = decode_label(rec.value)
                labels.append(label)
                recs.append(rec)
                ts = label.label_time.timestamp()
                if ts > seen.get(rec.partition, -1.0):
                    seen[rec.partition] = ts
            except CardNumberError as exc:
                fail(exc, rec, "card_number")
            except ContractError as exc:
                fail(exc, rec, "decode")
        late: dict[int, str] = {}
        if labels:
            applied = await self.store.apply_labels(labels)  # FeatureStoreUnavailable → the caller retries
            for ev in applied.late:  # refused as too late for an entity: dead-lettered, never silently dropped
                if 0 <= ev.index < len(recs):
                    late.setdefault(ev.index, ev.reason())
        for idx, reason in late.items():
            fail(LateEventError(reason), recs[idx], "late")
        result.orders = len(labels) - len(late)
        return result

    def committed(self) -> None:
        return None
