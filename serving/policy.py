"""The credit policy applied to a PD: hard rules first, then PD cut-offs, a risk-based price and a limit."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from govrisk.core.records import Outcome
from govrisk.serving.config import CreditPolicyConfig, HardRule


class CreditPolicy:
    """A validated `CreditPolicyConfig`, with every field it reads checked against the model's inputs."""

    def __init__(
        self, *, config: CreditPolicyConfig, applicant_fields: set[str], raw_features: list[str]
    ) -> None:
        known = applicant_fields | set(raw_features)
        for rule in config.hard_rules:
            if rule.field not in known:
                raise ValueError(
                    f"policy {config.name}: hard rule {rule.name!r} reads unknown field {rule.field!r}; "
                    "use an applicant field or a raw characteristic of the champion's feature schema"
                )
        for f in (config.limit.requested_field, config.limit.segment_field):
            if f not in applicant_fields:
                raise ValueError(f"policy {config.name}: limit reads unknown applicant field {f!r}")
        if config.limit.revenue_feature not in raw_features:
            raise ValueError(
                f"policy {config.name}: limit.revenue_feature {config.limit.revenue_feature!r} is not a raw "
                "characteristic of the champion's feature schema"
            )
        self.config = config
        self.applicant_fields = applicant_fields
        self.label = f"{config.name}@{config.version}"

    @staticmethod
    def _fires(rule: HardRule, value: Any) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False  # an unknown value cannot trigger a rule; the PD still applies
        if rule.equals is not None:
            if isinstance(rule.equals, bool):
                return isinstance(value, bool | np.bool_) and bool(value) == rule.equals
            return value == rule.equals
        if rule.at_least is not None:
            return float(value) >= rule.at_least
        return float(value) <= rule.at_most  # type: ignore[operator]

    def rate(self, pd_: float) -> float:
        p = self.config.pricing
        raw = p.funding_cost + pd_ * p.lgd + p.capital_margin + p.operating_margin
        return float(min(max(raw, p.min_rate), p.max_rate))

    def limit(self, *, monthly_revenue: float, requested: float, entity_type: str) -> float:
        c = self.config.limit
        capacity = monthly_revenue * c.revenue_months if math.isfinite(monthly_revenue) else 0.0
        cap = c.caps.get(entity_type, 0.0)
        amount = max(min(requested, capacity, cap), 0.0)
        return float(math.floor(amount / c.round_to) * c.round_to)

    @property
    def raw_fields(self) -> list[str]:
        """The raw characteristics `decide` reads (from the champion's `FeatureSet.raw`)."""
        rules = [r.field for r in self.config.hard_rules if r.field not in self.applicant_fields]
        return sorted({*rules, self.config.limit.revenue_feature})

    def decide(self, *, pd_: float, applicant: Mapping[str, Any], raw: Mapping[str, float]) -> Outcome:
        """One applicant's outcome; `applicant` holds the request's applicant fields, `raw` its raw
        characteristics named by `raw_fields`."""
        decision, rule_name, rule_reason = None, None, None
        for rule in self.config.hard_rules:
            value = applicant[rule.field] if rule.field in self.applicant_fields else float(raw[rule.field])
            if self._fires(rule, value):
                decision, rule_name, rule_reason = rule.decision, rule.name, rule.reason
                break
        if decision is None:
            a = self.config.admission
            decision = (
                "approve" if pd_ < a.approve_below_pd else "refer" if pd_ < a.decline_at_pd else "decline"
            )
        if decision == "decline":
            return Outcome(decision, rule_name, rule_reason, None, None)
        limit = self.limit(
            monthly_revenue=float(raw[self.config.limit.revenue_feature]),
            requested=float(applicant[self.config.limit.requested_field]),
            entity_type=str(applicant[self.config.limit.segment_field]),
        )
        return Outcome(decision, rule_name, rule_reason, self.rate(pd_), limit)
