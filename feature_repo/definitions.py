"""The only place a feature is defined. The stream processor and the backfill compile these Feast objects
into their window plan (``streamscore.features``); the model trains on, and serving reads, the FeatureService.

Windows slide: each aggregation's ``slide_interval`` is the tile size the engine keeps per entity, and the
value at instant t covers the tiles of the last ``time_window`` up to and including t's tile. Features
that are not Feast aggregations (seconds since the previous transaction) are declared as schema fields
with a ``streamscore.aggregate`` tag the engine understands.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, Field, FileSource, KafkaSource, StreamFeatureView
from feast.aggregation import Aggregation
from feast.data_format import AvroFormat
from feast.types import Float64, Int64
from feast.value_type import ValueType

from streamscore.resources import schemas_dir
from streamscore.settings import load_settings

_SCHEMA = (schemas_dir() / "transaction.avsc").read_text()
_SETTINGS = load_settings()
OFFLINE = _SETTINGS.data_dir / "offline"
WATERMARK_DELAY = timedelta(seconds=30)

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="Card holder")
merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING, description="Merchant")


def _transactions(view: str) -> KafkaSource:
    """Both views read the same topic; each has its own offline table of computed features."""
    return KafkaSource(
        name=f"transactions_for_{view}",
        timestamp_field="event_time",
        message_format=AvroFormat(schema_json=_SCHEMA),
        kafka_bootstrap_servers=_SETTINGS.kafka.bootstrap_servers,
        topic=_SETTINGS.topics.transactions,
        batch_source=FileSource(
            name=f"{view}_offline",
            path=str(OFFLINE / f"{view}.parquet"),
            timestamp_field="event_timestamp",
        ),
        watermark_delay_threshold=WATERMARK_DELAY,
    )


def _windows(
    column: str, functions: list[str], windows: dict[str, timedelta], slide: timedelta, prefix: str
) -> list[Aggregation]:
    """Names carry the entity (``user_amount_sum_1h``): a FeatureService needs unique feature names."""
    return [
        Aggregation(
            column=column, function=fn, time_window=w, slide_interval=slide, name=f"{prefix}{column}_{fn}_{label}"
        )
        for label, w in windows.items()
        for fn in functions
    ]


def _fields(aggregations: list[Aggregation]) -> list[Field]:
    """Feast serves only declared fields: one per aggregation, typed by what the function returns."""
    return [Field(name=a.name, dtype=Int64 if "count" in a.function else Float64) for a in aggregations]


_SINCE_PREVIOUS = {"streamscore.aggregate": "seconds_since_previous", "streamscore.column": "event_time"}
_MINUTE = timedelta(minutes=1)

_user_aggregations = [
    *_windows(
        "amount",
        ["count", "sum", "mean", "max"],
        {"5m": timedelta(minutes=5), "1h": timedelta(hours=1), "24h": timedelta(hours=24)},
        _MINUTE,
        "user_",
    ),
    Aggregation(
        column="merchant_id",
        function="count_distinct",
        time_window=timedelta(hours=1),
        slide_interval=_MINUTE,
        name="user_merchant_count_distinct_1h",
    ),
]

user_transactions = StreamFeatureView(
    name="user_transactions",
    source=_transactions("user_transactions"),
    entities=[user],
    ttl=timedelta(days=2),
    aggregations=_user_aggregations,
    schema=[
        *_fields(_user_aggregations),
        Field(name="user_secs_since_prev_txn", dtype=Float64, tags=_SINCE_PREVIOUS),
    ],
    timestamp_field="event_time",
    online=True,
    offline=True,
    description="Velocity and spend of a card holder over sliding windows",
)

_merchant_aggregations = _windows(
    "amount", ["count", "mean"], {"10m": timedelta(minutes=10), "24h": timedelta(hours=24)}, _MINUTE, "merchant_"
)

merchant_transactions = StreamFeatureView(
    name="merchant_transactions",
    source=_transactions("merchant_transactions"),
    entities=[merchant],
    ttl=timedelta(days=2),
    aggregations=_merchant_aggregations,
    schema=_fields(_merchant_aggregations),
    timestamp_field="event_time",
    online=True,
    offline=True,
    description="Traffic and ticket size of a merchant over sliding windows",
)

fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[user_transactions, merchant_transactions],
    description="Inputs of the fraud model, in this order",
)
