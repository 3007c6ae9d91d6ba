"""Alerts on the stream of inspections: rules take ``Observation``s and give ``Alert``s, sinks deliver them.

No torch, web framework or database here: the library, a notebook and the line service use the
same rules. ``AlertEngine`` runs the rules, raises each alert key once and feeds the sinks.
"""

from .charts import PageHinkley, ewma_ucl, p_chart_ucl
from .engine import AlertEngine
from .events import Alert, Observation, json_safe
from .novelty import KnownKinds, NewAnomalyKind
from .rules import ALL_KINDS, DefectRateChart, InputHealth, NormalDrift, Rule
from .sinks import CallbackSink, JsonLinesSink, MqttSink, Sink, WebhookSink

__all__ = [
    "ALL_KINDS", "Alert", "AlertEngine", "CallbackSink", "DefectRateChart", "InputHealth", "JsonLinesSink",
    "KnownKinds", "MqttSink", "NewAnomalyKind", "NormalDrift", "Observation", "PageHinkley", "Rule", "Sink",
    "WebhookSink", "ewma_ucl", "json_safe", "p_chart_ucl",
]
