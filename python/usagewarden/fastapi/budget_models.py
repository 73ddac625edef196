"""The bodies and answers of the usage API's budget routes
(``budget_routes``): a budget's definition is ``usagewarden.Budget``'s
keyword arguments."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from .models import BudgetStatus

#: A stored budget's name: what the store accepts, and what fits a URL path as it is.
NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
Scope = Literal["global", "namespace", "agent", "consumer", "model", "workflow"]
NamedPeriod = Literal["daily", "weekly", "monthly", "total"]


class BudgetDefinition(BaseModel):
    """What ``PUT`` replaces: every field of the definition (omitted ones
    take ``Budget``'s defaults)."""

    model_config = ConfigDict(extra="forbid")

    limit_usd: float = Field(ge=0, allow_inf_nan=False, description="The limit in USD.")
    scope: Scope = "global"
    match: str | None = Field(
        None, min_length=1, max_length=256, description="Which value of the scope; null: each."
    )
    period: NamedPeriod | float = Field(
        "monthly", description="A calendar period, or a rolling window in seconds."
    )
    tz: str = Field("UTC", min_length=1, max_length=64, description="The calendar's IANA zone.")
    thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.75, 0.9, 1.0], max_length=64)
    action: Literal["alert", "block", "downgrade"] = "block"
    downgrade_to: str | None = Field(None, min_length=1, max_length=256)
    soft: bool = False


class BudgetCreate(BudgetDefinition):
    name: str = Field(pattern=NAME_PATTERN)


class BudgetOut(BudgetDefinition):
    name: str
    namespace: str
    period: NamedPeriod | float
    created_at: AwareDatetime
    updated_at: AwareDatetime
    reset_at: AwareDatetime | None = Field(description="Spend counts from here after a reset.")
    deleted_at: AwareDatetime | None


class StoredBudgetList(BaseModel):
    budgets: list[BudgetOut]


class StoredBudgetStatus(BudgetStatus):
    namespace: str


class BudgetAlert(BaseModel):
    """A budget whose spend reached a threshold this period (the highest one)."""

    budget: str
    scope_value: str
    threshold: float
    spent_usd: float
    limit_usd: float


class StatusSummary(BaseModel):
    namespace: str
    budgets: list[StoredBudgetStatus]
    alerts: list[BudgetAlert]


class OneBudgetStatus(BaseModel):
    budget: BudgetOut
    thresholds: list[float]
    status: list[StoredBudgetStatus] = Field(
        description="One entry per scope value (one for a global or matched budget)."
    )


class DaySpend(BaseModel):
    day: str = Field(description="The day in the budget's time zone.")
    spent_usd: float


class BudgetHistory(BaseModel):
    budget: str
    namespace: str
    tz: str
    days: int
    history: list[DaySpend]


create_adapter: TypeAdapter[BudgetCreate] = TypeAdapter(BudgetCreate)
definition_adapter: TypeAdapter[BudgetDefinition] = TypeAdapter(BudgetDefinition)
