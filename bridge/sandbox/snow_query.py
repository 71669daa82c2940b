"""ServiceNow encoded queries (``sysparm_query``): parse them and test records against them.

The engine is table-agnostic: callers say which fields exist (``is_known``) and how to read a
field of a record (``value_of``). It reproduces the behaviour that matters to a client:

* ``^`` is AND, ``^OR`` ORs a condition with the one before it, ``^NQ`` starts a new query
  whose rows are added to the previous ones (an OR of whole groups).
* Operators ``=``, ``!=``, ``IN``, ``NOT IN``, ``LIKE``, ``NOT LIKE``, ``STARTSWITH``,
  ``ENDSWITH``, ``ISEMPTY``, ``ISNOTEMPTY``, ``<``, ``<=``, ``>``, ``>=``; ``ORDERBY<field>`` and
  ``ORDERBYDESC<field>`` set the order.
* String comparisons ignore case, like the default MySQL collation behind an instance.
* A condition on an unknown field, or one that cannot be parsed, is silently dropped: the rest
  of the query still applies, so ``nonexistent=x`` alone matches every row. This is how an
  instance behaves unless ``glide.invalid_query.returns_no_rows`` is set, and it is the trap a
  client must survive.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Condition", "EncodedQuery", "OrderBy", "parse_query"]

# Alternation order matters: longer operators that share a prefix with shorter ones come first.
_CONDITION_RE = re.compile(
    r"(?P<field>[A-Za-z0-9_.]+?)"
    r"(?P<op>NOT IN|NOT LIKE|ISNOTEMPTY|ISEMPTY|STARTSWITH|ENDSWITH|LIKE|IN|!=|>=|<=|=|>|<)"
    r"(?P<value>.*)",
    re.DOTALL,
)
_FIELD_RE = re.compile(r"[A-Za-z0-9_.]+")
_T = TypeVar("_T", float, str)


@dataclass(frozen=True)
class Condition:
    """One ``field<op>value`` term."""

    field: str
    op: str
    value: str

    def test(self, actual: str) -> bool:
        """Whether a record whose field holds ``actual`` satisfies this condition."""
        left = actual.casefold()
        right = self.value.casefold()
        match self.op:
            case "=":
                return left == right
            case "!=":
                return left != right
            case "IN":
                return left in _split_list(right)
            case "NOT IN":
                return left not in _split_list(right)
            case "LIKE":
                return right in left
            case "NOT LIKE":
                return right not in left
            case "STARTSWITH":
                return left.startswith(right)
            case "ENDSWITH":
                return left.endswith(right)
            case "ISEMPTY":
                return actual == ""
            case "ISNOTEMPTY":
                return actual != ""
            case _:
                return _compare(self.op, left, right)


@dataclass(frozen=True)
class OrderBy:
    """One ``ORDERBY``/``ORDERBYDESC`` term."""

    field: str
    descending: bool = False


@dataclass(frozen=True)
class EncodedQuery:
    """A parsed query: OR of groups, each an AND of terms, each an OR of conditions.

    ``ignored`` lists the terms that were dropped (unknown field or unparseable), so tests and
    debug logs can show what an instance would have silently skipped.
    """

    groups: tuple[tuple[tuple[Condition, ...], ...], ...] = ()
    order: tuple[OrderBy, ...] = ()
    ignored: tuple[str, ...] = ()

    def matches(self, value_of: Callable[[str], str]) -> bool:
        """Whether a record (read through ``value_of(field)``) is selected by the query."""
        if not self.groups:
            return True
        return any(
            all(any(cond.test(value_of(cond.field)) for cond in alternatives) for alternatives in group)
            for group in self.groups
        )


def parse_query(query: str, is_known: Callable[[str], bool]) -> EncodedQuery:
    """Parse an encoded query, dropping terms on unknown fields the way an instance does."""
    groups: list[list[list[Condition]]] = [[]]
    order: list[OrderBy] = []
    ignored: list[str] = []
    for index, raw_term in enumerate(query.split("^") if query else []):
        term = raw_term
        if not term or term == "EQ":
            continue
        if term.startswith("ORDERBYDESC") or term.startswith("ORDERBY"):
            descending = term.startswith("ORDERBYDESC")
            field = term[len("ORDERBYDESC") :] if descending else term[len("ORDERBY") :]
            if _FIELD_RE.fullmatch(field) and is_known(field):
                order.append(OrderBy(field, descending))
            else:
                ignored.append(raw_term)
            continue
        is_or = False
        if index > 0 and term.startswith("NQ"):
            groups.append([])
            term = term[2:]
        elif index > 0 and term.startswith("OR"):
            is_or = True
            term = term[2:]
        condition = _parse_condition(term)
        if condition is None or not is_known(condition.field):
            ignored.append(raw_term)
            continue
        current = groups[-1]
        # ^OR joins the last condition kept; with none kept in this group it stands alone.
        if is_or and current:
            current[-1].append(condition)
        else:
            current.append([condition])
    if any(not group for group in groups):
        # A group whose every term was dropped selects everything, so the whole OR does too.
        return EncodedQuery((), tuple(order), tuple(ignored))
    frozen = tuple(tuple(tuple(alts) for alts in group) for group in groups)
    return EncodedQuery(frozen, tuple(order), tuple(ignored))


def _parse_condition(term: str) -> Condition | None:
    match = _CONDITION_RE.fullmatch(term)
    if match is None:
        return None
    return Condition(match["field"], match["op"], match["value"])


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",")]


def _compare(op: str, left: str, right: str) -> bool:
    # Numbers compare as numbers (integer and choice fields); anything else, such as the
    # "YYYY-MM-DD HH:MM:SS" date-times, compares as text, which orders those correctly too.
    try:
        return _ordered(op, float(left), float(right))
    except ValueError:
        return _ordered(op, left, right)


def _ordered(op: str, left: _T, right: _T) -> bool:
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    if op == ">":
        return left > right
    return op == ">=" and left >= right
