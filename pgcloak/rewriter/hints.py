"""PostgreSQL's HINT for a misspelled column reference ("Perhaps you meant ...").

pgcloak answers a reference to a missing column itself (the server must not see
the client's word), so it gives the hint PostgreSQL 15 would: the same fuzzy
match over the query's FROM items at every level (parse_relation.c,
searchRangeTableForCol / updateFuzzyAttrMatchState / errorMissingColumn):
Levenshtein distance with unit costs, at most 3, at most half the length of the
name written, the distance of a mistyped qualifier added as a penalty, one or
two equally close columns (three or more: a closer one is needed).
"""

from __future__ import annotations

from dataclasses import dataclass

from pgcloak.rewriter.scope import Item, Scope

__all__ = ["missing_column_hint"]

MAX_FUZZY_DISTANCE = 3


def levenshtein(a: str, b: str, max_d: int) -> int:
    """Edit distance (unit costs), or `max_d + 1` when it exceeds `max_d`."""
    if abs(len(a) - len(b)) > max_d:
        return max_d + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if min(cur) > max_d:
            return max_d + 1
        prev = cur
    return min(prev[-1], max_d + 1)


@dataclass
class _Fuzzy:
    """FuzzyAttrMatchState: the closest column(s) so far (`first`/`second`: indexes)."""

    distance: int = MAX_FUZZY_DISTANCE + 1
    rfirst: Item | None = None
    first: int | None = None
    rsecond: Item | None = None
    second: int | None = None

    def update(self, penalty: int, item: Item, actual: str, match: str, index: int) -> None:
        if penalty > self.distance or not actual:
            return
        # PostgreSQL compares lengths in bytes (strlen) and distances in characters.
        dist = levenshtein(actual, match, self.distance + 1 - penalty)
        if dist > len(match.encode()) // 2:
            return
        dist += penalty
        if dist < self.distance:
            self.distance, self.rfirst, self.first = dist, item, index
            self.rsecond, self.second = None, None
        elif dist == self.distance:
            if self.second is not None:  # too many at this distance: need a closer one
                self.rfirst = self.rsecond = None
                self.first = self.second = None
                self.distance = dist - 1
            elif self.first is not None:
                self.rsecond, self.second = item, index
            elif self.distance <= MAX_FUZZY_DISTANCE:
                self.rfirst, self.first = item, index


def missing_column_hint(scope: Scope, qual: str | None, name: str) -> str | None:
    """The HINT PostgreSQL gives for column `name` (qualified by `qual`) not found.

    None when there is none, or when a FROM item's columns are unknown (a relation
    pgcloak does not cloak): PostgreSQL's answer would depend on them.
    """
    state = _Fuzzy()
    exact: Item | None = None
    for level in scope.levels():
        for item in level.items:
            if item.refname is None:
                continue  # not a range table entry (the output columns of a set operation)
            if item.cols is None or item.partial:
                return None
            penalty = 0
            if qual is not None:
                penalty = levenshtein(qual, item.refname, MAX_FUZZY_DISTANCE + 1)
            found = False
            for index, col in enumerate(item.cols):
                found = found or col.name == name
                state.update(penalty, item, col.name, name, index)
            if found and penalty == 0:
                exact = item
                break
        if exact is not None:
            break
    if exact is not None:  # there, but not visible from here
        return (
            f'There is a column named "{name}" in table "{exact.refname}", but it cannot be '
            "referenced from this part of the query."
        )
    first = _label(state.rfirst, state.first)
    if first is None:
        return None
    second = _label(state.rsecond, state.second)
    if second is None:
        return f"Perhaps you meant to reference the column {first}."
    return f"Perhaps you meant to reference the column {first} or the column {second}."


def _label(item: Item | None, index: int | None) -> str | None:
    if item is None or index is None or item.cols is None:
        return None
    return f'"{item.refname}.{item.cols[index].name}"'
