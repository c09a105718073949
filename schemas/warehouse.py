"""Snowflake warehouse tables: their columns, DDL and how a row becomes a load line.

The operational tables (``schemas.tables``) are lower-case PostgreSQL tables;
the warehouse copy follows the design document's Snowflake naming instead
(``FRONTEND_EVENTS`` with ``USER_ID``, ``SESSION_ID``, ``EVENT_TYPE``,
``TIMESTAMP`` ...), so its analytics queries run unmodified. Each
``WarehouseTable`` says which project table's rows it receives: column
``X`` is filled from the row's key ``x``.

``load_fields`` is the pure core of the Snowflake sink: it turns one row dict
into the text fields of one CSV line for ``COPY INTO``, checking what
Snowflake would refuse (a NULL in a NOT NULL column, text longer than its
``VARCHAR(n)``, a value that is not a number or a time) so that a bad row is
named before it is loaded. Times are stored as ``TIMESTAMP_NTZ`` holding UTC.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import pathlib
import typing

from schemas.tables import TABLES, json_default, to_utc_datetime

__all__ = [
    "WarehouseColumn",
    "WarehouseTable",
    "WAREHOUSE_TABLES",
    "warehouse_table_for",
    "load_fields",
    "snowflake_ddl",
    "snowflake_query",
    "SNOWFLAKE_QUERIES",
]

# The design document's Snowflake analytics queries, stored unmodified.
QUERIES_DIR = pathlib.Path(__file__).parent / "sql" / "snowflake"
SNOWFLAKE_QUERIES = ("user_journey", "conversion_funnel")

TEXT, INTEGER, FLOAT, DECIMAL, BOOLEAN, TIMESTAMP, JSON = (
    "text", "integer", "float", "decimal", "boolean", "timestamp", "json")


@dataclasses.dataclass(frozen=True)
class WarehouseColumn:
    name: str  # Snowflake name, upper case (unquoted identifiers fold to it)
    kind: str  # one of TEXT, INTEGER, FLOAT, DECIMAL, BOOLEAN, TIMESTAMP, JSON
    nullable: bool = True
    max_length: typing.Optional[int] = None  # TEXT: VARCHAR(n), characters
    precision: int = 38  # DECIMAL: NUMBER(precision, scale)
    scale: int = 0

    @property
    def source(self) -> str:
        """The row dict key that fills this column."""
        return self.name.lower()

    @property
    def sql_type(self) -> str:
        if self.kind == TEXT:
            return f"VARCHAR({self.max_length})" if self.max_length else "VARCHAR"
        if self.kind == DECIMAL:
            return f"NUMBER({self.precision},{self.scale})"
        return {INTEGER: "INTEGER", FLOAT: "FLOAT", BOOLEAN: "BOOLEAN",
                TIMESTAMP: "TIMESTAMP_NTZ", JSON: "VARIANT"}[self.kind]

    @property
    def staging_type(self) -> str:
        # JSON is loaded as text and parsed by the MERGE (PARSE_JSON): a CSV
        # field is not a VARIANT.
        return "VARCHAR" if self.kind == JSON else self.sql_type


@dataclasses.dataclass(frozen=True)
class WarehouseTable:
    name: str
    source_table: str  # the schemas.tables name whose rows this table receives
    columns: typing.Tuple[WarehouseColumn, ...]
    key: typing.Tuple[str, ...]
    # A column whose larger value wins: the MERGE updates a row only when the
    # incoming value is not older (as the PostgreSQL upsert's update_condition).
    newer_wins: typing.Optional[str] = None

    def __post_init__(self):
        names = [c.name for c in self.columns]
        missing = [k for k in self.key if k not in names]
        if missing:
            raise ValueError(f"{self.name}: key columns {missing} not in columns")
        if self.newer_wins is not None and self.newer_wins not in names:
            raise ValueError(f"{self.name}: newer_wins column {self.newer_wins} not in columns")
        if self.source_table not in TABLES:
            raise ValueError(f"{self.name}: unknown source table {self.source_table!r}")
        unknown = [c.source for c in self.columns
                   if c.source not in TABLES[self.source_table].columns]
        if unknown:
            raise ValueError(f"{self.name}: {unknown} are not {self.source_table} columns")

    @property
    def column_names(self) -> typing.Tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def key_of(self, fields: typing.Sequence) -> tuple:
        """The key values of a ``load_fields`` result."""
        names = self.column_names
        return tuple(fields[names.index(k)] for k in self.key)


def _c(name, kind, nullable=True, max_length=None, precision=38, scale=0):
    return WarehouseColumn(name, kind, nullable, max_length, precision, scale)


WAREHOUSE_TABLES: typing.Dict[str, WarehouseTable] = {}


def _register(table: WarehouseTable) -> WarehouseTable:
    WAREHOUSE_TABLES[table.name] = table
    return table


# The design document's FRONTEND_EVENTS (its queries read USER_ID, SESSION_ID,
# EVENT_TYPE, TIMESTAMP), one row per accepted frontend event, with the
# enrichment the operational frontend_analytics table carries.
FRONTEND_EVENTS = _register(WarehouseTable(
    name="FRONTEND_EVENTS",
    source_table="frontend_analytics",
    columns=(
        _c("EVENT_ID", TEXT, False, 100),
        _c("USER_ID", TEXT, True, 100),
        _c("SESSION_ID", TEXT, True, 100),
        _c("EVENT_TYPE", TEXT, False, 50),
        _c("TIMESTAMP", TIMESTAMP, False),
        _c("PAGE_CATEGORY", TEXT, True, 50),
        _c("PAGE_URL", TEXT),
        _c("DEVICE_TYPE", TEXT, True, 20),
        _c("BROWSER", TEXT, True, 50),
        _c("OS", TEXT, True, 50),
        _c("COUNTRY", TEXT, True, 8),
        _c("USER_SEGMENT", TEXT, True, 50),
        _c("ENGAGEMENT_SCORE", INTEGER),
        _c("CONVERSION_STAGE", TEXT, True, 50),
        _c("QUALITY_SCORE", INTEGER),
        _c("REFERRER_SOURCE", TEXT, True, 50),
        _c("UTM_SOURCE", TEXT, True, 100),
        _c("UTM_MEDIUM", TEXT, True, 100),
        _c("UTM_CAMPAIGN", TEXT, True, 200),
        _c("TRANSFORMATION_METADATA", JSON),
    ),
    key=("EVENT_ID",),
))

# One row per agent turn (the operational agent_turns table, the columns an
# analyst joins and aggregates on).
AGENT_TURNS = _register(WarehouseTable(
    name="AGENT_TURNS",
    source_table="agent_turns",
    columns=(
        _c("SESSION_ID", TEXT, False, 100),
        _c("TURN_ID", TEXT, False, 100),
        _c("EVENT_ID", TEXT, True, 100),
        _c("USER_ID", TEXT, True, 100),
        _c("TENANT_ID", TEXT, True, 100),
        _c("CHANNEL", TEXT, True, 50),
        _c("TIMESTAMP", TIMESTAMP, False),
        _c("MODEL", TEXT, True, 100),
        _c("MODEL_FAMILY", TEXT, True, 50),
        _c("MODEL_PROVIDER", TEXT, True, 50),
        _c("TOKENS_IN", INTEGER),
        _c("TOKENS_OUT", INTEGER),
        _c("CACHED_TOKENS_IN", INTEGER),
        _c("TOTAL_TOKENS", INTEGER),
        _c("LATENCY_MS", FLOAT),
        _c("TOKENS_PER_SECOND", FLOAT),
        _c("ESTIMATED_COST_USD", DECIMAL, precision=10, scale=6),
        _c("PRICE_BOOK_VERSION", TEXT, True, 20),
        _c("EFFICIENCY_SCORE", INTEGER),
        _c("QUALITY_SCORE", INTEGER),
        _c("BUSINESS_VALUE_SCORE", INTEGER),
        _c("SENTIMENT", TEXT, True, 20),
        _c("LANGUAGE", TEXT, True, 8),
        _c("USER_INTENT", TEXT, True, 100),
        _c("LEAD_CAPTURED", BOOLEAN),
        _c("TOPICS", JSON),
        _c("TOOLS_USED", JSON),
    ),
    key=("SESSION_ID", "TURN_ID"),
))


# One row per Marketo lead: the scored marketo_leads row as redacted for the
# archive (transforms.marketo.redacted_lead): the email token, never the
# address or the name. The latest UPDATED_AT wins, as in PostgreSQL.
MARKETO_LEADS = _register(WarehouseTable(
    name="MARKETO_LEADS",
    source_table="marketo_leads",
    columns=(
        _c("LEAD_ID", INTEGER, False),
        _c("EMAIL_TOKEN", TEXT, True, 40),
        _c("EMAIL_DOMAIN", TEXT, True, 255),
        _c("EMAIL_DOMAIN_CLASS", TEXT, True, 20),
        _c("COMPANY", TEXT, True, 255),
        _c("LEAD_SOURCE", TEXT, True, 100),
        _c("LEAD_QUALITY_SCORE", INTEGER),
        _c("ENGAGEMENT_LEVEL", TEXT, True, 20),
        _c("CONVERSION_PROBABILITY", FLOAT),
        _c("RECOMMENDED_ACTION", TEXT, True, 50),
        _c("GEOGRAPHIC_INFO", JSON),
        _c("SCORE_FACTORS", JSON),
        _c("ENGAGEMENT", JSON),
        _c("TRANSFORMATION_METADATA", JSON),
        _c("CREATED_AT", TIMESTAMP),
        _c("UPDATED_AT", TIMESTAMP),
    ),
    key=("LEAD_ID",),
    newer_wins="UPDATED_AT",
))


def warehouse_table_for(source_table: str) -> typing.Optional[WarehouseTable]:
    """The warehouse table fed by project table ``source_table``, if any."""
    for table in WAREHOUSE_TABLES.values():
        if table.source_table == source_table:
            return table
    return None


def quote(name: str) -> str:
    """A quoted Snowflake identifier (upper-case names stay what they were
    unquoted; ``TIMESTAMP`` is quoted so no parser reads it as a type)."""
    return '"' + name.replace('"', '""') + '"'


def snowflake_ddl() -> typing.List[str]:
    """``CREATE TABLE IF NOT EXISTS`` for every warehouse table. Snowflake
    enforces NOT NULL and VARCHAR lengths, not PRIMARY KEY (informational
    there; the MERGE keeps keys unique)."""
    statements = []
    for table in WAREHOUSE_TABLES.values():
        columns = [
            f"{quote(c.name)} {c.sql_type}{'' if c.nullable else ' NOT NULL'}"
            for c in table.columns
        ]
        columns.append("PRIMARY KEY (" + ", ".join(quote(k) for k in table.key) + ")")
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {quote(table.name)} (\n    "
            + ",\n    ".join(columns) + "\n)")
    return statements


# -- row -> CSV fields ---------------------------------------------------------

def _text(column: WarehouseColumn, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{column.name}: expected text, got {type(value).__name__}")
    text = value if isinstance(value, str) else str(value)
    if column.max_length is not None and len(text) > column.max_length:
        raise ValueError(
            f"{column.name}: {len(text)} characters exceed VARCHAR({column.max_length})")
    return text


def _integer(column: WarehouseColumn, value) -> str:
    if isinstance(value, bool):
        raise ValueError(f"{column.name}: expected an integer, got a boolean")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{column.name}: {value!r} is not an integer")
        value = int(value)
    try:
        return str(int(value))
    except (TypeError, ValueError):
        raise ValueError(f"{column.name}: {value!r} is not an integer") from None


def _float(column: WarehouseColumn, value) -> str:
    if isinstance(value, bool):
        raise ValueError(f"{column.name}: expected a number, got a boolean")
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"{column.name}: {value!r} is not a number") from None


def _decimal(column: WarehouseColumn, value) -> str:
    if isinstance(value, bool):
        raise ValueError(f"{column.name}: expected a number, got a boolean")
    try:
        number = decimal.Decimal(str(value))
    except (decimal.InvalidOperation, ValueError):
        raise ValueError(f"{column.name}: {value!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{column.name}: {value!r} is not a finite number")
    number = number.quantize(decimal.Decimal(1).scaleb(-column.scale),
                             rounding=decimal.ROUND_HALF_UP)
    if abs(number) >= decimal.Decimal(10) ** (column.precision - column.scale):
        raise ValueError(
            f"{column.name}: {value!r} does not fit NUMBER({column.precision},{column.scale})")
    return format(number, "f")


def _boolean(column: WarehouseColumn, value) -> str:
    if not isinstance(value, bool):
        raise ValueError(f"{column.name}: expected a boolean, got {value!r}")
    return "TRUE" if value else "FALSE"


def _timestamp(column: WarehouseColumn, value) -> str:
    try:
        when = to_utc_datetime(value)
    except (TypeError, ValueError, OverflowError, OSError):
        raise ValueError(f"{column.name}: {value!r} is not a time") from None
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _json(column: WarehouseColumn, value) -> str:
    return json.dumps(value, sort_keys=True, default=json_default, ensure_ascii=False)


_CONVERT = {TEXT: _text, INTEGER: _integer, FLOAT: _float, DECIMAL: _decimal,
            BOOLEAN: _boolean, TIMESTAMP: _timestamp, JSON: _json}


def load_fields(table: WarehouseTable, row: typing.Mapping) -> typing.Tuple[typing.Optional[str], ...]:
    """The CSV fields (text, or None for NULL) that load ``row`` into
    ``table``, in column order. Raises ``ValueError`` naming the column when
    Snowflake would refuse the value."""
    if not isinstance(row, typing.Mapping):
        raise ValueError(f"{table.name}: a row must be a mapping, got {type(row).__name__}")
    fields = []
    for column in table.columns:
        value = row.get(column.source)
        if value is None or (column.kind == TIMESTAMP and value == ""):
            if not column.nullable:
                raise ValueError(f"{column.name}: NULL in a NOT NULL column")
            fields.append(None)
            continue
        fields.append(_CONVERT[column.kind](column, value))
    return tuple(fields)


def snowflake_query(name: str) -> str:
    """The text of a stored analytics query (``SNOWFLAKE_QUERIES``)."""
    if name not in SNOWFLAKE_QUERIES:
        raise ValueError(f"unknown query {name!r}; known: {SNOWFLAKE_QUERIES}")
    return (QUERIES_DIR / f"{name}.sql").read_text(encoding="utf-8")
