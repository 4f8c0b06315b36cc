"""The excursion rules engine and the alarm lifecycle: the pure core of alarming.

Modules: ``model`` (values), ``config`` (rule specs), ``profiles`` (built-in rules per
device kind), ``evaluators``/``windows``/``forecast`` (one class per rule kind),
``latch`` (on-delays and severities), ``device`` (one device's rules, late data),
``engine`` (all devices), ``lifecycle`` (alarm states and user actions).
"""
