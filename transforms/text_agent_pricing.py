"""Model families and the versioned LLM price book (pure functions, no Beam).

``transforms/data/price_book.yaml`` holds both: ``versions`` (prices per 1M
tokens, each version with an ``effective_from`` date) and ``model_families``
(regex rules naming the provider and family of a model). The YAML's header
says how to maintain it.

How a turn is priced::

    version  = newest version with effective_from <= the turn's UTC date
               (turns before the first version use the first version)
    price    = that version's entry whose key is the LONGEST prefix of the
               normalised model name (no entry -> cost unknown, NULL)
    cost_usd = (uncached_in * input + cached_in * cached_input
                + tokens_out * output) / 1,000,000, rounded to 6 decimals
               (cached_input defaults to input when the provider has no
               cache-read discount; cached_in is clamped to [0, tokens_in])

Cost restatement (``beam_pipelines/restate_costs.py``) prices the same turn
under a version named explicitly (``PriceBook.estimate(..., version=...)``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import pathlib
import re
import typing

import yaml

__all__ = [
    "DEFAULT_PRICE_BOOK_PATH",
    "ModelPrice",
    "PriceBookVersion",
    "PriceBook",
    "CostEstimate",
    "ModelFamilies",
    "normalise_model_name",
    "load_price_book",
    "load_model_families",
]

DEFAULT_PRICE_BOOK_PATH = pathlib.Path(__file__).parent / "data" / "price_book.yaml"

TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are quoted per 1M tokens
COST_DECIMALS = 6  # agent_turns.estimated_cost_usd is DECIMAL(10,6)

# Cloud marketplaces put a region and a vendor in front of the model id
# (Bedrock: "us.anthropic.claude-3-5-sonnet-20240620-v1:0").
_VENDOR_PREFIX = re.compile(
    r"^(?:(?:us|eu|apac|global)\.)?"
    r"(?:anthropic|meta|mistral|cohere|amazon|ai21|deepseek|qwen|openai|google)\."
)


def normalise_model_name(model_name: str) -> str:
    """Lower case, last path segment, Bedrock-style vendor prefix removed:
    ``"openai/GPT-4o-mini"`` -> ``"gpt-4o-mini"``,
    ``"us.anthropic.claude-3-haiku-20240307-v1:0"`` ->
    ``"claude-3-haiku-20240307-v1:0"``."""
    name = (model_name or "").strip().lower()
    name = name.rsplit("/", 1)[-1]
    return _VENDOR_PREFIX.sub("", name)


@dataclasses.dataclass(frozen=True)
class ModelPrice:
    key: str
    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: typing.Optional[float] = None


@dataclasses.dataclass(frozen=True)
class CostEstimate:
    cost_usd: typing.Optional[float]  # None when the model has no price
    version: str
    price_key: typing.Optional[str]
    cached_tokens_in: int


@dataclasses.dataclass(frozen=True)
class PriceBookVersion:
    version: str
    effective_from: dt.date
    prices: typing.Mapping[str, ModelPrice]

    def price_for(self, model_name: str) -> typing.Optional[ModelPrice]:
        name = normalise_model_name(model_name)
        best = None
        for key, price in self.prices.items():
            if name.startswith(key) and (best is None or len(key) > len(best.key)):
                best = price
        return best


MAX_CACHED_PRICES = 10_000


class PriceBook:
    """All versions of the price book, ordered by ``effective_from``."""

    def __init__(self, versions: typing.Sequence[PriceBookVersion]):
        if not versions:
            raise ValueError("a price book needs at least one version")
        self.versions = sorted(versions, key=lambda v: v.effective_from)
        self._by_name = {v.version: v for v in self.versions}
        # (version, model name as sent) -> price: the longest-prefix search
        # runs once per model a worker sees, not once per turn.
        self._prices: typing.Dict[typing.Tuple[str, str], typing.Optional[ModelPrice]] = {}
        if len(self._by_name) != len(self.versions):
            raise ValueError("price book versions must have distinct names")

    def version(self, name: str) -> PriceBookVersion:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"price book has no version {name!r}; known: {sorted(self._by_name)}"
            ) from None

    def version_at(self, timestamp_ms: int) -> PriceBookVersion:
        day = dt.datetime.fromtimestamp(timestamp_ms / 1000.0, tz=dt.timezone.utc).date()
        chosen = self.versions[0]
        for candidate in self.versions:
            if candidate.effective_from <= day:
                chosen = candidate
            else:
                break
        return chosen

    def estimate(
        self,
        model_name: str,
        tokens_in: int,
        tokens_out: int,
        cached_tokens_in: int = 0,
        timestamp_ms: typing.Optional[int] = None,
        version: typing.Optional[str] = None,
    ) -> CostEstimate:
        """The turn's cost under ``version`` (or the one in force at
        ``timestamp_ms``); see the module docstring for the formula."""
        if version is not None:
            book = self.version(version)
        elif timestamp_ms is not None:
            book = self.version_at(timestamp_ms)
        else:
            raise ValueError("estimate needs timestamp_ms or version")
        tokens_in = max(int(tokens_in or 0), 0)
        tokens_out = max(int(tokens_out or 0), 0)
        cached = min(max(int(cached_tokens_in or 0), 0), tokens_in)
        key = (book.version, model_name)
        try:
            price = self._prices[key]
        except KeyError:
            if len(self._prices) >= MAX_CACHED_PRICES:  # model names come from producers
                self._prices.clear()
            price = self._prices[key] = book.price_for(model_name)
        if price is None:
            return CostEstimate(None, book.version, None, cached)
        cached_rate = (
            price.cached_input_per_mtok
            if price.cached_input_per_mtok is not None
            else price.input_per_mtok
        )
        cost = (
            (tokens_in - cached) * price.input_per_mtok
            + cached * cached_rate
            + tokens_out * price.output_per_mtok
        ) / TOKENS_PER_PRICE_UNIT
        return CostEstimate(round(cost, COST_DECIMALS), book.version, price.key, cached)


def _parse_date(value, where: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{where}: effective_from {value!r} is not YYYY-MM-DD") from None


def _parse_price(key: str, spec, where: str) -> ModelPrice:
    if not isinstance(spec, dict) or "input" not in spec or "output" not in spec:
        raise ValueError(f"{where}: price {key!r} needs 'input' and 'output'")
    values = {}
    for field in ("input", "output", "cached_input"):
        if spec.get(field) is None:
            continue
        value = float(spec[field])
        if value < 0:
            raise ValueError(f"{where}: price {key!r} has negative {field}")
        values[field] = value
    return ModelPrice(
        key=normalise_model_name(key),
        input_per_mtok=values["input"],
        output_per_mtok=values["output"],
        cached_input_per_mtok=values.get("cached_input"),
    )


def price_book_from_dict(document: typing.Mapping) -> PriceBook:
    raw_versions = document.get("versions") or []
    resolved: typing.Dict[str, PriceBookVersion] = {}
    pending = list(raw_versions)
    # Resolve `base:` references in dependency order (a base may be listed later).
    while pending:
        progressed = False
        for raw in list(pending):
            name = str(raw.get("version") or "")
            where = f"price book version {name!r}"
            if not name:
                raise ValueError("price book version without a 'version' name")
            base_name = raw.get("base")
            if base_name is not None and str(base_name) not in resolved:
                continue
            prices = dict(resolved[str(base_name)].prices) if base_name is not None else {}
            for key, spec in (raw.get("prices") or {}).items():
                price = _parse_price(str(key), spec, where)
                prices[price.key] = price
            resolved[name] = PriceBookVersion(
                version=name,
                effective_from=_parse_date(raw.get("effective_from"), where),
                prices=prices,
            )
            pending.remove(raw)
            progressed = True
        if not progressed:
            names = [str(r.get("version")) for r in pending]
            raise ValueError(f"price book versions {names} have unknown or circular 'base'")
    return PriceBook(list(resolved.values()))


@functools.lru_cache(maxsize=8)
def _load_yaml(path: str) -> dict:
    with open(path, "r", encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def load_price_book(path: typing.Optional[str] = None) -> PriceBook:
    return price_book_from_dict(_load_yaml(str(path or DEFAULT_PRICE_BOOK_PATH)))


class ModelFamilies:
    """Ordered regex rules: model name -> (provider, family)."""

    UNKNOWN = ("unknown", "unknown")

    def __init__(self, rules: typing.Sequence[typing.Mapping]):
        self._rules = [
            (re.compile(str(r["pattern"])), str(r["provider"]), str(r["family"]))
            for r in rules
        ]

    def classify(self, model_name: str) -> typing.Tuple[str, str]:
        name = (model_name or "").strip().lower()
        for pattern, provider, family in self._rules:
            if pattern.search(name):
                return provider, family
        return self.UNKNOWN


def load_model_families(path: typing.Optional[str] = None) -> ModelFamilies:
    return ModelFamilies(_load_yaml(str(path or DEFAULT_PRICE_BOOK_PATH)).get("model_families") or [])
