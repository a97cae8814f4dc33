"""The local development stack: Apache Kafka (KRaft) and Redis on loopback, without Docker."""

from services.stack.components import StackError
from services.stack.stack import ComponentStatus, Stack

__all__ = ["ComponentStatus", "Stack", "StackError"]
