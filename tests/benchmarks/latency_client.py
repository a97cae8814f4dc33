"""A caller in a process of its own: sends score requests at a steady rate and reads the answers on a consumer
thread, timing each request from the moment it is handed to the producer to the moment its answer is read.

``--mode pipeline`` sends to the requests topic and reads the predictions topic (the worker in between);
``--mode bare`` sends the same bytes to one topic and reads them back from it: the Kafka round trip with the
same clients and settings, the floor the pipeline is set against. The consumer is subscribed and assigned
before the first send, on its own thread, so reading never waits behind sending (a single loop that sends
then polls measures its own send time). Wall-clock milliseconds throughout, so the prediction's Kafka
timestamp (set by the worker's producer) and its ``scored_at`` split the time per hop on this one host.

``python -m tests.benchmarks.latency_client SETTINGS_JSON OUT.npz --mode pipeline --rate 1000 --seconds 10``
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from confluent_kafka import TopicPartition

# What a latency-sensitive caller sets (docs/inference.md): send at once, and fetch answers as they land.
PRODUCER = {"linger.ms": 0, "acks": "all"}
WARMUP = 200
CONSUMER = {"fetch.wait.max.ms": 10, "fetch.min.bytes": 1, "auto.offset.reset": "latest"}


def main() -> None:
    from streamscore.kafka import Consumer, Producer
    from streamscore.serde import Serde
    from streamscore.settings import Settings
    from tests.benchmarks.bench_inference import _requests

    parser = argparse.ArgumentParser()
    parser.add_argument("settings", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--mode", choices=("pipeline", "bare"), required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--consumer", type=json.loads, default={}, help="JSON of consumer settings over CONSUMER")
    args = parser.parse_args()
    settings = Settings.model_validate(json.loads(args.settings.read_text()))
    send_topic = settings.topics.score_requests
    read_topic = send_topic if args.mode == "bare" else settings.topics.predictions
    n = int(args.rate * args.seconds)
    requests = _requests(n, seed=args.seed)
    index = {r["request_id"]: i for i, r in enumerate(requests)}
    # Warm-up requests, untimed: the timing starts once the answers flow (the first fetches of a freshly
    # assigned consumer, the worker's first batches and the brokers' fetch sessions are not what a caller
    # in steady state sees).
    warm = _requests(WARMUP, seed=args.seed + 1_000_000)
    warm_ids = {r["request_id"] for r in warm}
    sent = np.full(n, np.nan)
    got = np.full(n, np.nan)
    produced = np.full(n, np.nan)  # the answer's Kafka timestamp (producer CreateTime)
    scored = np.full(n, np.nan)
    phases = {k: np.full(n, np.nan) for k in ("queue_ms", "features_ms", "inference_ms")}
    ready, done, warmed = threading.Event(), threading.Event(), threading.Event()
    decoder, encoder = Serde("prediction" if args.mode == "pipeline" else "score_request"), Serde("score_request")

    def read() -> None:
        conf = {**CONSUMER, **args.consumer}
        consumer = Consumer(settings.kafka, f"caller-{args.mode}-{args.seed}", [], client_suffix="caller", **conf)
        try:
            # Every partition assigned at its end before the first send (no group: nothing to rebalance).
            partitions = consumer.raw.list_topics(read_topic, timeout=10).topics[read_topic].partitions
            starts = []
            for p in partitions:
                _, high = consumer.raw.get_watermark_offsets(TopicPartition(read_topic, p), timeout=10)
                starts.append(TopicPartition(read_topic, p, high))
            consumer.raw.assign(starts)
            ready.set()
            seen = 0
            while seen < n and not done.is_set():
                for msg in consumer.poll_ready(1000, 0.05):  # at once, not after 50 ms or 1,000 messages
                    now = time.time() * 1000
                    record = decoder.decode(msg.value())
                    warm_ids.discard(record["request_id"])
                    if not warm_ids:
                        warmed.set()
                    i = index.get(record["request_id"])
                    if i is None or not np.isnan(got[i]):
                        continue
                    got[i] = now
                    produced[i] = msg.timestamp()[1]
                    seen += 1
                    if args.mode == "pipeline":
                        scored[i] = record["scored_at"].timestamp() * 1000
                        for k in phases:
                            phases[k][i] = record["latency"][k]
        finally:
            consumer.close()

    reader = threading.Thread(target=read, name="caller-reader", daemon=True)
    reader.start()
    if not ready.wait(60):
        raise SystemExit("the caller's consumer got no partitions in 60 s")
    producer = Producer(settings.kafka, client_suffix="caller", **PRODUCER)
    for r in warm:
        producer.send(send_topic, encoder.encode(r), key=r["user_id"])
        producer.raw.poll(0)
        time.sleep(0.01)
    producer.flush()
    if not warmed.wait(60):
        raise SystemExit(f"{len(warm_ids)} of {WARMUP} warm-up requests unanswered in 60 s")
    start = time.perf_counter()
    for i, r in enumerate(requests):
        while (ahead := start + i / args.rate - time.perf_counter()) > 0.0005:
            time.sleep(ahead)
        r["request_time"] = datetime.now(tz=UTC)
        sent[i] = time.time() * 1000
        producer.send(send_topic, encoder.encode(r), key=r["user_id"])
        producer.raw.poll(0)
    producer.flush()
    reader.join(timeout=max(30.0, args.seconds))
    done.set()
    np.savez(args.out, sent=sent, got=got, produced=produced, scored=scored, **phases)


if __name__ == "__main__":
    main()
