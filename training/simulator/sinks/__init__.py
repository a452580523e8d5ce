"""Targets for simulated traffic: files (JSONL, Parquet), Kafka, Kinesis.

Each target module exposes one function taking the event stream; optional drivers (pyarrow,
aiokafka, boto3) are imported only when their target is used.
"""

from training.simulator.sinks.base import LiveStamper, SinkReport, StopFlag, paced_batches
from training.simulator.sinks.files import FileFormat, write_files
from training.simulator.sinks.kafka import KafkaTarget, send_to_kafka
from training.simulator.sinks.kinesis import KinesisTarget, send_to_kinesis

__all__ = [
    "FileFormat",
    "KafkaTarget",
    "KinesisTarget",
    "LiveStamper",
    "SinkReport",
    "StopFlag",
    "paced_batches",
    "send_to_kafka",
    "send_to_kinesis",
    "write_files",
]
