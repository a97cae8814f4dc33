"""The local development stack: Apache Kafka (KRaft) and Redis on loopback, without Docker."""

from streamscore.stack.components import StackError
from streamscore.stack.stack import ComponentStatus, Stack

__all__ = ["ComponentStatus", "Stack", "StackError"]
